"""Benchmarks: each script measures the things it compares in one run and
records them in reports/bench.json."""

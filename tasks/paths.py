"""Every path the pipeline reads or writes, declared once. dvc.yaml names the same
paths as stage deps and outs."""

from pathlib import Path

PARAMS = Path("params.yaml")
EXPECTATIONS = Path("expectations")

INGESTED = Path("data/ingested")  # table.parquet + arrays.npz + meta.json
VALIDATED = Path("data/validated")
QUARANTINE = Path("data/quarantine")
PROCESSED = Path("data/processed")  # train/val/test .npz + meta.json

MODELS = Path("models")
ONNX_DIR = MODELS / "onnx"
CHAMPION = MODELS / "champion.onnx"

REPORTS = Path("reports")
VALIDATION_REPORT = REPORTS / "validation.json"
EVALUATION_REPORT = REPORTS / "evaluation.json"
METRICS = REPORTS / "metrics.json"
PLOTS = REPORTS / "plots"

# A table plus arrays: the canonical form every source is turned into.
TABLE = "table.parquet"
ARRAYS = "arrays.npz"
META = "meta.json"

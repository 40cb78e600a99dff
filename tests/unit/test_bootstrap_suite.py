"""tasks/bootstrap_suite.py: a suite profiled from penguins-raw passes on that
data, fails on shifted or collapsed data, renders one expectation per line,
and the CLI refuses to overwrite a file without --force."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

from tasks import bootstrap_suite
from tasks.bootstrap_suite import profile_suite, render
from tasks.contracts.dataset import LABEL
from tasks.core.params import load_params
from tasks.data.gate import assess, failure_message, run_suite
from tasks.ingest import ingest

NUMERIC = "Body Mass (g)"


@pytest.fixture(scope="module", autouse=True)
def no_gx_analytics():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        yield


@pytest.fixture(scope="module")
def penguins():
    """(params, typed table after the gate's corrections, profiled suite)."""
    params = load_params(REPO_ROOT / "params.yaml")
    params = dataclasses.replace(params, data=dataclasses.replace(params.data, source="penguins"))
    dataset = ingest(params.data)
    suite = profile_suite(dataset, params, "penguins_bootstrap")
    _, typed = assess(dataset, params.task.type, params.validate)
    return params, typed.table, suite


def failed(outcome) -> set[tuple[str, str | None]]:
    return {(r["expectation"], r["column"]) for r in outcome.failed}


def test_the_profiled_suite_passes_on_its_own_data(penguins):
    _, table, suite = penguins
    outcome = run_suite(table, suite, {})
    assert outcome.success, failure_message(outcome, "bootstrapped")
    assert outcome.warnings == []
    assert len(outcome.results) == len(suite["expectations"])


def test_the_suite_describes_the_data(penguins):
    _, table, suite = penguins
    by_key = {(e["type"], e["kwargs"].get("column")): e for e in suite["expectations"]}
    columns = by_key[("expect_table_columns_to_match_set", None)]["kwargs"]["column_set"]
    assert columns == list(table.columns)
    classes = by_key[("expect_column_values_to_be_in_set", LABEL)]["kwargs"]["value_set"]
    assert classes == sorted(table[LABEL].dropna().unique())
    low, high = table[NUMERIC].min(), table[NUMERIC].max()
    between = by_key[("expect_column_values_to_be_between", NUMERIC)]["kwargs"]
    assert between["min_value"] < low and between["max_value"] > high
    assert suite["name"] == "penguins_bootstrap"


def test_a_numeric_column_shifted_out_of_range_fails(penguins):
    _, table, suite = penguins
    shifted = table.copy()
    shifted[NUMERIC] = shifted[NUMERIC] + 100_000
    outcome = run_suite(shifted, suite, {})
    assert not outcome.success
    assert failed(outcome) == {("expect_column_values_to_be_between", NUMERIC)}


def test_a_removed_class_fails(penguins):
    _, table, suite = penguins
    gone = sorted(table[LABEL].dropna().unique())[1]
    outcome = run_suite(table[table[LABEL] != gone].reset_index(drop=True), suite, {})
    assert not outcome.success
    assert ("expect_column_value_counts_to_be_at_least", LABEL) in failed(outcome)
    counts = next(r for r in outcome.failed if r["expectation"] == "expect_column_value_counts_to_be_at_least")
    assert counts["observed_value"] == 0


def test_render_is_the_same_suite_with_one_expectation_per_line(penguins):
    _, _, suite = penguins
    text = render(suite)
    assert json.loads(text) == suite
    lines = [line for line in text.splitlines() if line.lstrip().startswith('{"type"')]
    assert len(lines) == len(suite["expectations"])
    for line, expectation in zip(lines, suite["expectations"]):
        assert json.loads(line.strip().rstrip(",")) == expectation


def test_main_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "existing.json"
    out.write_text("hand-edited\n")
    run = subprocess.run(
        [sys.executable, "-m", "tasks.bootstrap_suite", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert str(out) in run.stderr and "--force" in run.stderr
    assert "Traceback" not in run.stderr
    assert out.read_text() == "hand-edited\n"


def test_main_overwrites_with_force(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["source"] = "penguins"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "mine.json"
    out.write_text("hand-edited\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bootstrap_suite", "--out", str(out), "--force"])
    bootstrap_suite.main()
    suite = json.loads(out.read_text())
    assert suite["name"] == "mine" and suite["expectations"]

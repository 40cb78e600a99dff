"""The monitor flow on a prediction log written by the server's own writer
(deploy.predlog), against a small synthetic image dataset, in Prefect's test
harness with a temporary MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.contracts.processed import ProcessedMeta, save_split, write_meta

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("a", "b", "c")
HOUR = 3600.0
ROWS_PER_WINDOW = 120

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_project(root: Path) -> Path:
    """params.yaml (the repo's, small windows thresholds kept) and data/processed
    of 8x8 images with uniform 0..16 pixels; no champion file, so the reference
    prediction mix is the test split's labels."""
    rng = np.random.default_rng(0)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["monitor"].update(window_minutes=60, min_rows=50)
    params["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"  # relative: resolved against the project
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for split, n in (("train", 600), ("test", 150)):
        y = rng.choice(3, size=n, p=[0.5, 0.3, 0.2]).astype(np.int64)
        save_split(split, {"x": rng.uniform(0, 16, (n, 1, 8, 8)).astype(np.float32), "y": y}, root / "data/processed")
    write_meta(
        ProcessedMeta(
            kind="image",
            task="multiclass",
            classes=CLASSES,
            input_shape=(1, 8, 8),
            mean=(8.0,),
            std=(4.6,),
            data_hash="synthetic",
            resample="none",
            counts={},
            pixel_max=16.0,
        ),
        root / "data/processed",
    )
    return root


def write_predictions(
    root: Path, starts: list[float], shifted: list[bool], seed: int = 1, refused: list[int] | None = None
) -> list[tuple[str, int, str]]:
    """ROWS_PER_WINDOW rows per window through the server's log writer; a shifted
    window's images are darker and flatter (pixels halved); `refused[w]` refused
    requests in window w, logged as the server logs them (one row each, with
    the status and error). Returns (request_id, row, predicted) of every answered row."""
    from deploy.predlog import Entry, PredictionLog

    rng = np.random.default_rng(seed)
    log = PredictionLog(root / "logs/predictions", max_buffer=100_000, flush_interval_s=0.05, count=lambda *_: None)
    log.start()
    written = []
    for w, (start, shift) in enumerate(zip(starts, shifted)):
        ts = np.sort(start + rng.uniform(1, HOUR - 1, ROWS_PER_WINDOW // 2))
        for i, t in enumerate(ts):  # 60 requests of 2 rows each
            x = rng.uniform(0, 16, (2, 1, 8, 8)).astype(np.float32)
            if shift:
                x *= 0.5
            # Calm windows predict the reference mix (the test split's, 0.5/0.3/0.2); shifted ones another.
            predicted = rng.choice(3, size=2, p=[0.1, 0.2, 0.7] if shift else [0.5, 0.3, 0.2])
            probs = rng.dirichlet([1, 1, 1], size=2).astype(np.float32) * 0.5
            probs[np.arange(2), predicted] += 0.5
            request_id = f"w{w}-r{i}"
            log.append(
                Entry(
                    ts=float(t),
                    request_id=request_id,
                    endpoint="predict",
                    model_name="distillery",
                    model_version="7",
                    latency_ms=float(rng.gamma(2.0, 1.5)),
                    task="multiclass",
                    classes=CLASSES,
                    x=x,
                    outputs=probs,
                )
            )
            written += [(request_id, row, CLASSES[int(p.argmax())]) for row, p in enumerate(probs)]
        for j, t in enumerate(np.sort(start + rng.uniform(1, HOUR - 1, (refused or [0] * len(starts))[w]))):
            log.append(
                Entry(
                    ts=float(t),
                    request_id=f"w{w}-refused{j}",
                    endpoint="predict",
                    model_name="distillery",
                    model_version="7",
                    latency_ms=5000.0,
                    status=422,
                    error="rows[0]: expected a number",
                )
            )
    log.close()
    return written


def past_windows(n: int) -> list[float]:
    """Starts of the n complete windows before the current one."""
    boundary = time.time() // HOUR * HOUR
    return [boundary - (n - i) * HOUR for i in range(n)]


def _history(root: Path, key: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("distillery-production")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["distillery.role"] == "production-monitor"
    assert run.info.status == "FINISHED" and run.info.end_time  # ended after each pass, never left RUNNING
    return sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)


def _state(root: Path) -> dict:
    return yaml.safe_load((root / "logs/monitor_state.json").read_text())


def test_drift_is_logged_per_window_and_triggers_a_retrain_that_fails_clearly(tmp_path: Path, harness) -> None:
    from flows.monitor import RetrainNotTriggered, monitor

    root = make_project(tmp_path / "drifted")
    starts = past_windows(3)
    write_predictions(root, starts, shifted=[False, True, True], refused=[0, 6, 0])

    with pytest.raises(RetrainNotTriggered) as failure:
        monitor(root=str(root))
    message = str(failure.value)
    assert "deployment 'distillery-pipeline/retrain'" in message and "does not exist" in message
    assert "prefect server start" in message and "make deploy" in message

    # One MLflow step per window, on the long-lived production run; drift in the shifted windows only.
    steps = [int(s // HOUR) for s in starts]
    psi = _history(root, "feature/mean/psi")
    assert [m.step for m in psi] == steps
    assert [m.timestamp for m in psi] == [int((s + HOUR) * 1000) for s in starts]
    assert psi[0].value < 0.2 < psi[1].value
    assert [m.value for m in _history(root, "drift/retrain_signal")] == [0.0, 1.0, 1.0]
    assert [m.value for m in _history(root, "ops/rows")] == [ROWS_PER_WINDOW] * 3
    assert [m.value for m in _history(root, "ops/requests")] == [ROWS_PER_WINDOW // 2] * 3
    # The refused requests are counted in the error rate only (refused / (answered requests + refused)).
    requests = ROWS_PER_WINDOW // 2
    assert [m.value for m in _history(root, "ops/error_rate")] == pytest.approx([0.0, 6 / (requests + 6), 0.0])
    assert _history(root, "ops/latency_p99_ms")[1].value < 5000.0
    assert _history(root, "prediction/psi")[2].value > 0.2
    assert _history(root, "ops/latency_p95_ms")[0].value > 0

    # The trigger failed, so the watermark stays and the next run retries it,
    # without logging the windows to MLflow a second time.
    state = _state(root)
    assert state["watermark"] is None and state["logged_until"] >= starts[-1] + HOUR  # later if the hour turned
    with pytest.raises(RetrainNotTriggered):
        monitor(root=str(root))
    assert len(_history(root, "feature/mean/psi")) == 3

    # The Prefect artifact says what happened.
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["production-monitoring"]))
        )
    assert artifacts and "could not be triggered" in artifacts[0].data and "| **yes** |" in artifacts[0].data


def test_the_cli_reports_the_missing_deployment_without_a_traceback(tmp_path: Path, harness) -> None:
    from prefect.settings import PREFECT_API_URL

    root = make_project(tmp_path / "cli")
    write_predictions(root, past_windows(1), shifted=[True])
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the harness's server: no deployments
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.monitor", "--root", str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: drift calls for retraining" in done.stderr and "make deploy" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_calm_log_does_not_retrain_scores_late_labels_and_is_read_once(tmp_path: Path, harness) -> None:
    from flows.monitor import monitor

    root = make_project(tmp_path / "calm")
    starts = past_windows(3)
    written = write_predictions(root, starts, shifted=[False, False, False], seed=2)
    # Late labels for 100 rows: the first 80 agree with the prediction.
    labels = [
        (rid, row, pred if i < 80 else next(c for c in CLASSES if c != pred))
        for i, (rid, row, pred) in enumerate(written[:100])
    ]
    (root / "logs/feedback").mkdir(parents=True)
    with open(root / "logs/feedback/labels.csv", "w") as handle:
        handle.write("request_id,row,label\n" + "".join(f"{r},{i},{label}\n" for r, i, label in labels))

    result = monitor(root=str(root))
    assert result["rows"] == 3 * ROWS_PER_WINDOW
    assert [w["retrain"] for w in result["windows"]] == [False] * 3
    assert result["retrain"]["triggered"] is False
    assert all(w["drifted_features"] == [] for w in result["windows"])
    assert result["quality"]["labeled_rows"] == 100 and result["quality"]["accuracy"] == pytest.approx(0.8)
    (accuracy,) = _history(root, "live/accuracy")
    # Logged at the step of the latest complete window.
    assert accuracy.value == pytest.approx(0.8) and accuracy.step == int(result["watermark"] // HOUR) - 1
    assert np.isfinite(_history(root, "live/ece")[0].value)
    assert len(_history(root, "feature/std/p_value")) == 3

    assert _state(root)["watermark"] == result["watermark"] >= starts[-1] + HOUR

    # The watermark moved: a second run reads nothing new and logs nothing.
    again = monitor(root=str(root))
    assert again["rows"] == 0 and again["windows"] == [] and again["mlflow_run_id"] is None
    assert len(_history(root, "feature/std/p_value")) == 3
    assert len(_history(root, "live/accuracy")) == 1


def test_the_monitor_without_a_pipeline_run_says_what_to_do(tmp_path: Path, harness) -> None:
    from flows.monitor import monitor
    from tasks.core.errors import DistilleryError

    root = make_project(tmp_path / "bare")
    shutil.rmtree(root / "data")
    # No log yet: nothing to do, and no reference needed.
    assert monitor(root=str(root))["rows"] == 0
    (root / "logs/monitor_state.json").unlink()  # start over: the next run reads the whole log
    write_predictions(root, [time.time() // HOUR * HOUR - 2 * HOUR], shifted=[False])
    with pytest.raises(
        DistilleryError,
        match=r"data/processed/meta.json: processed meta not found; run the stage that writes it first \(dvc repro\)",
    ):
        monitor(root=str(root))


def test_a_pass_while_the_tracking_server_is_down_fails_naming_it_and_the_next_one_catches_up(
    tmp_path: Path, harness
) -> None:
    """The same tracking URI, first with nothing listening, then with a real
    MLflow server started on it: the failed pass moves no state, so the next
    one logs every window it missed, once."""
    from mlflow import MlflowClient
    from serve.serve_helpers import free_port, mlflow_server

    from flows.monitor import monitor
    from tasks.core.errors import DistilleryError

    root = make_project(tmp_path / "down")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = uri
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    starts = past_windows(2)
    write_predictions(root, starts, shifted=[False, False], seed=3)

    with pytest.raises(DistilleryError, match=rf"no MLflow tracking server answers at MLFLOW_TRACKING_URI={uri}"):
        monitor(root=str(root))
    assert not (root / "logs/monitor_state.json").exists()

    proc = mlflow_server(port, tmp_path / "mlflow-server.db", tmp_path / "artifacts", tmp_path / "mlflow.log")
    try:
        result = monitor(root=str(root))
        assert result["rows"] == 2 * ROWS_PER_WINDOW and len(result["windows"]) == 2
        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("distillery-production").experiment_id])
        history = client.get_metric_history(run.info.run_id, "ops/rows")
        assert sorted(m.step for m in history) == [int(s // HOUR) for s in starts]
        assert run.info.status == "FINISHED"
        assert _state(root)["watermark"] >= starts[-1] + HOUR
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)

"""Production monitoring as a Prefect flow: the server's prediction log in;
drift, operations and live quality out to MLflow; retraining triggered when
drift passes the thresholds.

Each run reads the rows logged since the state file's watermark, up to the
start of the current window (only complete windows are judged, so each
window is measured once and keeps one MLflow step). Per window of
`monitor.window_minutes`: feature drift (PSI + KS / chi-squared), prediction
drift, latency and throughput. Labels that arrived in `monitor.feedback_dir`
since the last run give live accuracy, macro-F1 and ECE. Everything goes to
one long-lived MLflow run in `monitor.experiment`, one step per window, so the
MLflow UI charts production over time. A window of at least `min_rows` rows
that drifted triggers the `monitor.retrain_deployment` deployment (see
flows/deployments.py): the normal pipeline, whose select gates decide whether
the `champion` alias moves; the server follows the alias on its own.

The building blocks live in tasks/monitor/; this file only wires.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from tasks.contracts import predlog
from tasks.core import paths, tracking
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.params import MlflowParams, MonitorParams, load_params
from tasks.core.report import markdown_table
from tasks.core.task import task_of
from tasks.monitor import feedback, snapshot
from tasks.monitor import state as monitor_state
from tasks.monitor import windows as monitor_windows
from tasks.monitor.reference import Reference, build_reference

# The server writes its log buffer at least every DISTILLERY_SERVE_LOG_FLUSH_INTERVAL_S
# (1 s by default): a row answered before a window's end is on disk this long after it.
LOG_SETTLE_S = 5.0
RUN_TAG, RUN_TAG_VALUE = "distillery.role", "production-monitor"
START_DEPLOYMENTS = (
    "Start them: a Prefect server (`make stack`, or `.venv/bin/prefect server start` in one terminal), then "
    "`make deploy` and `make worker` in a second, and run the monitor against that server "
    "(`PREFECT_API_URL=http://127.0.0.1:4200/api make monitor`); see README, 'Production monitoring and schedules'."
)


class RetrainNotTriggered(DistilleryError):
    """Drift called for retraining but the retrain deployment could not be started."""


# --------------------------------------------------------------------------- small helpers


def tracking_uri(cfg: MlflowParams, root: Path) -> str:
    """The MLflow URI; a relative SQLite path is the project's, as for the pipeline's stages."""
    return tracking.resolved_at(cfg.resolved_uri(), root)


def settled_boundary(window_s: float) -> float:
    """Start of the current window, once rows answered before it are surely written."""
    now = time.time()
    boundary = monitor_windows.window_boundary(now, window_s)
    if now - boundary < LOG_SETTLE_S:
        time.sleep(LOG_SETTLE_S - (now - boundary))
    return boundary


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _key(name: str) -> str:
    return re.sub(r"[^\w\-./ ]", "_", name)  # MLflow metric keys allow letters, digits, _ - . / and space


def window_metrics(window: dict) -> dict[str, float]:
    """The MLflow metrics of one window: operations, drift per feature, prediction mix."""
    out: dict[str, float] = {f"ops/{k}": v for k, v in window["operations"].items()}
    out["ops/mean_probability"] = window["mean_probability"]
    out["drift/drifted_fraction"] = window["drifted_fraction"]
    out["drift/drifted_features"] = len(window["drifted_features"])
    out["drift/retrain_signal"] = float(window["retrain"])
    prediction = window["prediction"]
    if prediction is not None:
        out["prediction/psi"], out["prediction/p_value"] = prediction["psi"], prediction["p_value"]
        out["prediction/drifted"] = float(prediction["drifted"])
        for cls, share in prediction.get("shares", {}).items():  # a regression's value drift has none
            out[f"prediction/share/{_key(cls)}"] = share
    for f in window["features"]:
        base = f"feature/{_key(f['feature'])}"
        out[f"{base}/psi"], out[f"{base}/p_value"] = f["psi"], f["p_value"]
        out[f"{base}/{f['test']}"], out[f"{base}/drifted"] = f["statistic"], float(f["drifted"])
        for extra in ("missing_fraction", "unseen_fraction"):
            if extra in f:
                out[f"{base}/{extra}"] = f[extra]
    return out


def monitoring_run(client: Any, experiment: str) -> str:
    """The long-lived production run, found by its tag, created on first use."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_TAG}` = '{RUN_TAG_VALUE}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    note = "Production monitoring (flows/monitor.py): one step per window of the prediction log."
    return client.create_run(
        exp_id, run_name="production-monitoring", tags={RUN_TAG: RUN_TAG_VALUE, "mlflow.note.content": note}
    ).info.run_id


def crash_stale_runs(client: Any, runs: list, stale_after_s: float) -> list:
    """Mark crashed the runs that have been pending or running longer than
    `stale_after_s`; the others, still active. A flow run whose process was
    killed (kill -9, a lost machine) stays RUNNING in Prefect forever, and
    with the deployment's concurrency limit of 1 it would block every later
    retrain: its age is the sign that nothing is behind it any more."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    now, alive = datetime.now(timezone.utc), []
    for run in runs:
        since = run.state.timestamp if run.state is not None else run.created
        age = (now - since).total_seconds() if since is not None else 0.0
        if run.state_type in (StateType.RUNNING, StateType.PENDING) and age > stale_after_s:
            client.set_flow_run_state(
                run.id,
                Crashed(
                    message=f"{run.state_type.value.lower()} for {age / 60:.0f} min "
                    f"with no end (monitor.stale_run_minutes): presumed dead"
                ),
                force=True,
            )
        else:
            alive.append(run)
    return alive


def trigger_retrain(name: str, reason: str, stale_after_s: float = float("inf")) -> dict:
    """Start the retrain deployment (without waiting for it), unless a run of it
    is already pending or running (runs older than `stale_after_s` are marked
    crashed first); RetrainNotTriggered if it cannot be started."""
    import httpx
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    where = f"the Prefect API at {api}" if api else "Prefect's temporary local server (PREFECT_API_URL is not set)"
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(name)
            active = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING])
                    ),
                    # The cron schedule's future runs are Scheduled too; only a due one is "already queued".
                    expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(timezone.utc)),
                ),
                limit=20,
            )
            crashed = len(active)
            active = crash_stale_runs(client, active, stale_after_s)
            crashed -= len(active)
        if active:
            return {
                "triggered": False,
                "flow_run": str(active[0].id),
                "note": f"a run of {name} is already {active[0].state_type.value.lower()}",
            }
        run = run_deployment(name, timeout=0, tags=["drift"])
    except ObjectNotFound:
        raise RetrainNotTriggered(
            f"drift calls for retraining ({reason}), but the deployment '{name}' (monitor.retrain_deployment) "
            f"does not exist on {where}. {START_DEPLOYMENTS}"
        ) from None
    except (httpx.HTTPError, OSError) as err:
        raise RetrainNotTriggered(
            f"drift calls for retraining ({reason}), but {where} cannot be reached ({type(err).__name__}: {err}). "
            f"{START_DEPLOYMENTS}"
        ) from None
    stale = f" (after marking {crashed} stale run(s) crashed)" if crashed else ""
    return {"triggered": True, "flow_run": str(run.id), "note": f"started {name} run '{run.name}'{stale}"}


def summary_markdown(
    windows: list[dict],
    quality: dict,
    reference: Optional[Reference],
    params: MonitorParams,
    retrain: dict,
    since: Optional[float],
    boundary: float,
    logged_until: Optional[float],
    production: Optional[dict] = None,
) -> str:
    span = f"{_utc(since) if since is not None else 'the start of the log'} to {_utc(boundary)} UTC"
    lines = [
        f"## Production monitoring: {sum(w['operations']['rows'] for w in windows)} rows, "
        f"{len(windows)} window(s), {span}",
        "",
    ]
    if reference is not None:
        lines += [
            f"Reference: {reference.rows} training rows ({reference.kind}); prediction mix from "
            f"{reference.predictions_from}. A feature drifted at PSI > {params.psi_threshold} and "
            f"p < {params.p_value}; retrain when > {params.max_drifted_fraction:.0%} of features drifted or "
            f"the prediction PSI > {params.prediction_psi_threshold}, on windows of >= {params.min_rows} rows.",
            "",
        ]
    rows = [
        {
            "window (UTC)": _utc(w["start"]),
            "rows": w["operations"]["rows"],
            "req/s": w["operations"]["requests_per_s"],
            "p95 ms": w["operations"]["latency_p95_ms"],
            "drifted": f"{len(w['drifted_features'])}/{len(w['features'])}",
            "prediction PSI": w["prediction"]["psi"] if w["prediction"] else "n/a",
            "retrain": "**yes**" if w["retrain"] else "no",
            "why": w["reason"],
            "MLflow": "logged before" if logged_until is not None and w["start"] < logged_until else "logged",
        }
        for w in windows
    ]
    lines += ["### Windows", "", markdown_table(rows), ""]
    if windows:
        latest = windows[-1]
        features = [
            {
                "feature": f["feature"],
                "type": f["type"],
                "PSI": f["psi"],
                "test": f["test"],
                "p-value": f["p_value"],
                "drifted": "**yes**" if f["drifted"] else "no",
            }
            for f in latest["features"]
        ]
        lines += [
            f"### Features, window {_utc(latest['start'])} (models {', '.join(latest['models'])})",
            "",
            markdown_table(features),
            "",
        ]
    if quality.get("labeled_rows"):
        lines += [
            "### Live quality (labels that arrived since the last run)",
            "",
            markdown_table(
                [{k: quality.get(k) for k in ("labeled_rows", "accuracy", "macro_f1", "ece", "unmatched_labels")}]
            ),
            "",
        ]
    elif quality.get("unmatched_labels"):
        lines += [f"{quality['unmatched_labels']} new label(s) match no logged prediction.", ""]
    if production is not None:
        lines += [f"**Training data**: {production['note']}", ""]
    lines += [f"**Retraining**: {retrain.get('note', 'not needed')}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- tasks


@task(cache_policy=NO_CACHE)
def read_new_rows(log_dir: Path, since: Optional[float], until: float) -> pd.DataFrame:
    return predlog.read_rows(log_dir, since, until)


@task(cache_policy=NO_CACHE)
def load_reference(root: Path) -> Reference:
    return build_reference(root, champion=root / paths.CHAMPION)


@task(cache_policy=NO_CACHE)
def analyse_windows(rows: pd.DataFrame, reference: Reference, params: MonitorParams) -> list[dict]:
    return monitor_windows.analyse(rows, reference, params)


@task(cache_policy=NO_CACHE)
def score_labels(labels: pd.DataFrame, log_dir: Path, classes: list[str], ece_bins: int) -> dict:
    return monitor_windows.quality_of_labels(labels, log_dir, classes, ece_bins)


@task(cache_policy=NO_CACHE)
def snapshot_labels(root: Path, cfg: Any) -> dict:
    """New labels: rebuild the production snapshot, so the next retrain learns from them."""
    built = snapshot.build(root, cfg)
    return {
        "rows": len(built.rows),
        "quarantined": built.reasons,
        "sha256": built.sha256,
        "note": f"{cfg.data.production.path}: {snapshot.describe(built)}",
    }


@task(cache_policy=NO_CACHE)
def log_to_mlflow(
    uri: str,
    experiment: str,
    windows: list[dict],
    quality: dict,
    quality_step: int,
    quality_ts: float,
    tags: dict[str, str],
) -> str:
    """One batch of metrics per window, at the window's step and end time."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    # A tracking server that is down fails the pass at once, naming it, instead of
    # after MLflow's minutes of retries; the state is not moved, so the next pass
    # logs these windows once the server is back.
    tracking.check_server(uri)
    client = MlflowClient(tracking_uri=uri)
    run_id = monitoring_run(client, experiment)
    metrics = [
        Metric(key, float(value), int(w["end"] * 1000), w["step"])
        for w in windows
        for key, value in window_metrics(w).items()
        if pd.notna(value)
    ]
    if quality.get("labeled_rows") or quality.get("unmatched_labels"):
        metrics += [
            Metric(f"live/{key}", float(value), int(quality_ts * 1000), quality_step)
            for key, value in quality.items()
            if pd.notna(value)
        ]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    # Ended after each pass (the next pass logs to it again and ends it again), so MLflow
    # shows when monitoring last reported instead of a run RUNNING for days.
    client.set_terminated(run_id, "FINISHED")
    return run_id


# --------------------------------------------------------------------------- the flow


@flow(name="distillery-monitor", log_prints=True)
def monitor(root: str = ".", params: str = "params.yaml") -> dict:
    """Judge the prediction rows logged since the last run; log to MLflow; retrain on drift."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    cfg = load_params(root_path / params)
    m = cfg.monitor
    window_s = monitor_windows.window_seconds(m)
    state_path = root_path / m.state_file
    state = monitor_state.read_state(state_path)
    boundary = settled_boundary(window_s)
    log_dir = root_path / m.log_dir

    rows = read_new_rows(log_dir, state.watermark, boundary)
    # Live quality is logged once per window, at the latest complete one; labels
    # arriving twice within a window wait for the next.
    new_window = state.logged_until is None or boundary > state.logged_until
    labels, seen = pd.DataFrame(), state.feedback
    if new_window:
        labels, seen = feedback.read_feedback(root_path / m.feedback_dir, state.feedback)
    logger.info("%d new prediction rows up to %s UTC; %d new labels", len(rows), _utc(boundary), len(labels))

    reference, windows, quality, run_id = None, [], {"labeled_rows": 0, "unmatched_labels": 0}, None
    production: Optional[dict] = None
    if not rows.empty or not labels.empty:
        reference = load_reference(root_path)
        windows = analyse_windows(rows, reference, m)
        if task_of(reference.task).single_label:  # labels are class names; other tasks have no live quality yet
            quality = score_labels(labels, log_dir, reference.classes, cfg.evaluate.ece_bins)
        if not labels.empty:
            production = snapshot_labels(root_path, cfg)
            logger.info("%s", production["note"])
        to_log = [w for w in windows if state.logged_until is None or w["start"] >= state.logged_until]
        if to_log or quality["labeled_rows"] or quality["unmatched_labels"]:
            tags = {
                "reference": f"{reference.rows} {reference.kind} training rows; "
                f"predictions: {reference.predictions_from}",
                "thresholds": f"psi>{m.psi_threshold} & p<{m.p_value}; retrain: >{m.max_drifted_fraction} drifted "
                f"or prediction psi>{m.prediction_psi_threshold}; min_rows {m.min_rows}",
                "window_minutes": str(m.window_minutes),
                "last_window_utc": _utc(boundary - window_s),
            }
            run_id = log_to_mlflow(
                tracking_uri(cfg.mlflow, root_path),
                m.experiment,
                to_log,
                quality,
                monitor_windows.window_step(boundary - window_s, window_s),
                boundary,
                tags,
            )
    # What is in MLflow is remembered now, so a rerun after a failed trigger does not log it twice.
    monitor_state.write_state(
        state_path, monitor_state.MonitorState(state.watermark, max(boundary, state.logged_until or boundary), seen)
    )

    calls = [w for w in windows if w["retrain"]]
    retrain: dict[str, Any] = {"triggered": False, "note": "not needed: no window of enough rows drifted"}
    failure: Optional[RetrainNotTriggered] = None
    if calls:
        reason = "; ".join(f"window {_utc(w['start'])} UTC: {w['reason']}" for w in calls[-3:])
        try:
            retrain = trigger_retrain(m.retrain_deployment, reason, m.stale_run_minutes * 60)
            logger.info("retraining: %s", retrain["note"])
        except RetrainNotTriggered as err:
            failure = err
            retrain = {"triggered": False, "note": f"**could not be triggered**: {err}"}
    create_markdown_artifact(
        key="production-monitoring",
        markdown=summary_markdown(
            windows, quality, reference, m, retrain, state.watermark, boundary, state.logged_until, production
        ),
        description="drift, operations and live quality of the prediction log",
    )
    if failure is not None:
        # The watermark stays: the next run judges these rows again and retries the trigger.
        logger.error("%s", failure)
        return Failed(message=str(failure), data=failure)
    monitor_state.write_state(
        state_path, monitor_state.MonitorState(boundary, max(boundary, state.logged_until or boundary), seen)
    )
    return {
        "rows": len(rows),
        "windows": [
            {
                "start": w["start"],
                "step": w["step"],
                "rows": w["operations"]["rows"],
                "drifted_features": w["drifted_features"],
                "prediction_psi": w["prediction"]["psi"] if w["prediction"] else None,
                "retrain": w["retrain"],
                "reason": w["reason"],
            }
            for w in windows
        ],
        "quality": quality,
        "production": production,
        "retrain": retrain,
        "mlflow_run_id": run_id,
        "watermark": boundary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="One monitoring pass over the prediction log.")
    parser.add_argument("--root", default=".", help="the project folder (default: here)")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    args = parser.parse_args()
    result = monitor(root=args.root, params=args.params)
    drifted = [w for w in result["windows"] if w["retrain"]]
    print(
        f"monitor done: {result['rows']} rows in {len(result['windows'])} window(s); "
        f"{len(drifted)} drifted; retraining: {result['retrain']['note']}"
    )


if __name__ == "__main__":
    run_cli(main)

"""Cutting the prediction log into windows, measuring each, and the verdict:
does production call for retraining?"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tasks.contracts import predlog
from tasks.contracts.encoder import TableEncoder
from tasks.core.params import MonitorParams
from tasks.core.task import kind_of
from tasks.monitor.feedback import LABEL
from tasks.monitor.reference import Reference, as_categories
from tasks.monitor.stats import (
    categorical_drift,
    live_quality,
    numeric_drift,
    operational,
    prediction_drift,
)


def window_seconds(params: MonitorParams) -> float:
    return params.window_minutes * 60.0


def window_boundary(now: float, window_s: float) -> float:
    """Start of the window `now` lies in: rows before it are in complete windows."""
    return math.floor(now / window_s) * window_s


def window_step(start: float, window_s: float) -> int:
    """The MLflow step of the window starting at `start`: windows since the epoch,
    so a window keeps its step whichever run logs it."""
    return int(round(start / window_s))


def input_frame(inputs: pd.Series) -> pd.DataFrame:
    """The logged inputs JSON (a table row, or an image summary) as columns."""
    return pd.DataFrame.from_records([json.loads(s) for s in inputs], index=inputs.index)


def probability_matrix(probabilities: pd.Series, predicted: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """The logged probabilities as a rows x classes matrix; NaN rows where the
    model that answered had another class list (length, or argmax not `predicted`)."""
    out = np.full((len(probabilities), len(classes)), np.nan)
    names = np.asarray(classes, dtype=object)
    for i, (text, name) in enumerate(zip(probabilities, predicted)):
        values = json.loads(text) if isinstance(text, str) else []
        if len(values) == len(classes) and names[int(np.argmax(values))] == name:
            out[i] = values
    return out


def answered(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of answered requests (status 200), without the refused ones."""
    return frame[pd.to_numeric(frame[predlog.STATUS], errors="coerce") == predlog.OK]


def feature_p_value(params: MonitorParams, tests: int) -> float:
    """The p-value one feature's test must beat. With `bonferroni`, the
    family-wise rate across the window's `tests` is held at monitor.p_value:
    30 features tested at 0.01 each would flag one by chance in about a quarter
    of calm windows (1 - 0.99^30)."""
    return params.p_value / max(1, tests) if params.correction == "bonferroni" else params.p_value


def feature_drift(reference: Reference, inputs: pd.DataFrame, params: MonitorParams) -> list[dict]:
    """Each reference feature's drift report on the window's `inputs` (one
    column per feature; a missing column counts as all missing)."""
    p_value = feature_p_value(params, len(reference.features))
    if reference.encoder is not None and len(inputs):
        inputs = read_as_trained(reference.encoder, inputs)
    features = []
    for name, ref in reference.numeric.items():
        if (values := window_values(reference, inputs, name)) is not None:
            current = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            features.append(numeric_drift(name, ref, current, params.psi_threshold, p_value))
    for name, ref in reference.categorical.items():
        if (values := window_values(reference, inputs, name)) is not None:
            features.append(categorical_drift(name, ref, as_categories(values), params.psi_threshold, p_value))
    return features


def window_values(reference: Reference, inputs: pd.DataFrame, name: str) -> pd.Series | None:
    """One feature's values in the window; a column no row carries is all missing (a renamed or dropped
    column drifts). A picture's stored size, channels and format are compared over the pictures sent as
    files only: one sent as pixels has none, and is no sign of drift (None: no file in the window)."""
    if not kind_of(reference.kind).table and name in predlog.PICTURE:
        sent = inputs[name].notna() if name in inputs else pd.Series(False, index=inputs.index)
        return inputs.loc[sent, name] if sent.any() else None
    return inputs[name] if name in inputs else pd.Series(pd.NA, index=inputs.index, dtype=object)


def read_as_trained(encoder: TableEncoder, inputs: pd.DataFrame) -> pd.DataFrame:
    """The logged raw rows read as the gate read the training rows and the server read them
    (TableEncoder.read): a spelling or a unit training folded is not drift. A column a row
    lacked stays missing."""
    absent = [c for c in encoder.columns if c not in inputs]
    read, _refused = encoder.read(inputs.assign(**{c: None for c in absent}).astype({c: object for c in absent}))
    return read


def logged_unseen(ok: pd.DataFrame) -> dict[str, float] | None:
    """Per categorical column, the share of the window's answered rows the
    server flagged as holding a category training never saw (after reading the
    row as the gate did, so " mortgage " is not unseen where training kept
    MORTGAGE). None when some row carries no flag (an image, /infer, a row
    logged before the flag existed): the raw values are compared instead."""
    flags = ok[predlog.UNSEEN] if predlog.UNSEEN in ok else None
    if flags is None or not len(ok) or flags.isna().any():
        return None
    counts = Counter(name for text in flags for name in json.loads(text))
    return {name: n / len(ok) for name, n in counts.items()}


def analyse_window(frame: pd.DataFrame, reference: Reference, params: MonitorParams, start: float) -> dict:
    """Everything measured on one window of logged rows, and whether it calls for retraining."""
    window_s = window_seconds(params)
    ok = answered(frame)
    errors = int(len(frame) - len(ok))  # one row per refused request
    inputs = input_frame(ok[predlog.INPUTS]) if len(ok) else pd.DataFrame(index=ok.index)
    features = feature_drift(reference, inputs, params)
    flagged = logged_unseen(ok)
    if flagged is not None:
        for f in features:
            if "unseen_fraction" in f:
                f["unseen_fraction"] = flagged.get(f["feature"], 0.0)
    prediction = None
    if reference.predicted_counts and len(ok):
        prediction = prediction_drift(
            reference.predicted_counts,
            ok[predlog.PREDICTED].astype(str),
            params.prediction_psi_threshold,
            params.p_value,
        )
    elif reference.predicted_values is not None and len(ok):
        values = pd.to_numeric(ok[predlog.VALUE], errors="coerce").to_numpy(dtype=np.float64)
        prediction = numeric_drift(
            predlog.VALUE, reference.predicted_values, values, params.prediction_psi_threshold, params.p_value
        )
    probability = pd.to_numeric(ok[predlog.PROBABILITY], errors="coerce")
    report = {
        "start": start,
        "end": start + window_s,
        "step": window_step(start, window_s),
        "models": sorted({f"{n}:{v}" for n, v in zip(frame[predlog.MODEL_NAME], frame[predlog.MODEL_VERSION])}),
        "operations": operational(ok[predlog.TS], ok[predlog.LATENCY_MS], ok[predlog.ROW], window_s, errors),
        "mean_probability": float(probability.mean()) if probability.notna().any() else float("nan"),
        "features": features,
        "prediction": prediction,
    }
    drifted = [f["feature"] for f in features if f["drifted"]]
    report["drifted_features"] = drifted
    report["drifted_fraction"] = len(drifted) / len(features) if features else 0.0
    report["retrain"], report["reason"] = retrain_verdict(report, params)
    return report


def retrain_verdict(report: dict, params: MonitorParams) -> tuple[bool, str]:
    """Retrain when more than `max_drifted_fraction` of the features drifted or
    the prediction mix moved, on a window of at least `min_rows` rows."""
    rows = report["operations"]["rows"]
    reasons = []
    if report["drifted_fraction"] > params.max_drifted_fraction:
        reasons.append(
            f"{len(report['drifted_features'])}/{len(report['features'])} features drifted "
            f"({', '.join(report['drifted_features'])}) > {params.max_drifted_fraction:.0%}"
        )
    if report["prediction"] is not None and report["prediction"]["drifted"]:
        reasons.append(f"prediction PSI {report['prediction']['psi']:.3f} > {params.prediction_psi_threshold}")
    if not reasons:
        return False, "no drift"
    if rows < params.min_rows:
        return False, f"{'; '.join(reasons)}, but only {rows} rows < monitor.min_rows {params.min_rows}"
    return True, "; ".join(reasons)


def analyse(rows: pd.DataFrame, reference: Reference, params: MonitorParams) -> list[dict]:
    """One report per window that has rows, oldest first."""
    if rows.empty:
        return []
    window_s = window_seconds(params)
    starts = np.floor(rows[predlog.TS].to_numpy(dtype=np.float64) / window_s) * window_s
    return [analyse_window(group, reference, params, float(start)) for start, group in rows.groupby(starts, sort=True)]


def quality_of_labels(labels: pd.DataFrame, log_dir: str | Path, classes: Sequence[str], n_bins: int) -> dict:
    """Live quality of the predictions whose labels just arrived (joined on
    request_id + row); labels with no logged prediction are counted, not scored."""
    if labels.empty:
        return {"labeled_rows": 0, "unmatched_labels": 0}
    keys = [predlog.REQUEST_ID, predlog.ROW]
    logged = predlog.lookup(log_dir, labels).drop_duplicates(keys, keep="last")
    joined = labels.merge(logged.astype({predlog.ROW: np.int64}), on=keys, how="inner")
    probabilities = (
        probability_matrix(joined[predlog.PROBABILITIES], joined[predlog.PREDICTED], classes) if len(joined) else None
    )
    out = live_quality(joined[LABEL], joined[predlog.PREDICTED], probabilities, classes, n_bins)
    out["unmatched_labels"] = int(len(labels) - len(joined))
    return out

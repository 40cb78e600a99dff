"""Production monitoring: drift, operations and live quality, from the server's
prediction log. flows/monitor.py wires these; the statistics here are pure.

What "drifted" means here: a feature drifted when its population stability
index (PSI) exceeds `monitor.psi_threshold` *and* its test (KS for numbers,
chi-squared for categories) gives a p-value below `monitor.p_value`. PSI says
the shift is big enough to matter, the test that it is not sampling noise: on
a 50-row window PSI alone is ~0.2 by chance over 10 bins, and on a 100k-row
window a p-value alone flags shifts too small to matter. The predicted-class
mix is judged the same way, against `monitor.prediction_psi_threshold`.

The reference is what the champion was trained on: for images, the per-image
summary {mean, std, min, max} of the train split, the very summary the server
logs (deploy/predlog.py); for tables, the raw feature columns of the training
rows, typed by the encoder. The reference prediction mix is the champion's on
the test split (the real class mix; the train split may be resampled).
"""

from __future__ import annotations

import calendar
import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from tasks import paths
from tasks.config import MonitorParams
from tasks.core import DistilleryError, hash_arrays, load_npz, read_json, write_json

PSI_BINS = 10  # reference-quantile bins: deciles, the usual choice for PSI
EPSILON = 1e-4  # share given to an empty bin, so that ln(q / p) stays finite
MISSING = "<missing>"  # a missing categorical value is a category of its own
IMAGE_FEATURES = ("mean", "std", "min", "max")  # the server's per-image summary
LOG_GLOB = "predictions-*.db"
FEEDBACK_SUFFIXES = (".csv", ".parquet", ".pq")
FEEDBACK_COLUMNS = ("request_id", "row", "label")


# --------------------------------------------------------------------------- statistics (pure)


def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner cut points at the reference's quantiles, duplicates removed: a
    column with many equal values (pixels at 0) gets fewer, wider bins."""
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in the bins (-inf, e1], (e1, e2], ..., (ek, inf), plus one last
    bin for missing (non-finite) values, so a rise in gaps is a shift too."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[finite], side="left"), minlength=len(edges) + 1)
    return np.append(counts, (~finite).sum())


def distribution_psi(reference_counts: np.ndarray, current_counts: np.ndarray, eps: float = EPSILON) -> float:
    """PSI = sum over bins of (q - p) ln(q / p), with p the reference share and
    q the current one; an empty bin counts as `eps`."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    if ref.sum() == 0 or cur.sum() == 0:
        return float("nan")
    p = np.maximum(ref / ref.sum(), eps)
    q = np.maximum(cur / cur.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(reference: Sequence[float], current: Sequence[float], bins: int = PSI_BINS, eps: float = EPSILON) -> float:
    """Population stability index of a numeric feature, over bins cut at the
    reference's quantiles. < 0.1 stable, 0.1-0.2 moderate, > 0.2 a major shift."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    edges = quantile_edges(ref, bins)
    return distribution_psi(bin_counts(ref, edges), bin_counts(cur, edges), eps)


def ks_test(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on the finite values: (statistic, p-value);
    NaN when either side has none."""
    from scipy.stats import ks_2samp

    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size == 0 or cur.size == 0:
        return float("nan"), float("nan")
    result = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def category_counts(reference: Sequence[str], current: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Both samples counted over one aligned category list: the reference's
    categories first, then those only the current sample has (unseen)."""
    ref = pd.Series(np.asarray(reference, dtype=object)).value_counts()
    cur = pd.Series(np.asarray(current, dtype=object)).value_counts()
    categories = sorted(ref.index, key=str) + sorted((c for c in cur.index if c not in ref.index), key=str)
    return (
        [str(c) for c in categories],
        ref.reindex(categories, fill_value=0).to_numpy(dtype=np.int64),
        cur.reindex(categories, fill_value=0).to_numpy(dtype=np.int64),
    )


def chi2_test(reference: Sequence[str], current: Sequence[str]) -> dict[str, float]:
    """Pearson's chi-squared test of homogeneity on the 2 x k table of category
    counts (reference row, current row). Categories the reference never saw
    are columns like any other, and are counted as `unseen`."""
    from scipy.stats import chi2_contingency

    categories, ref, cur = category_counts(reference, current)
    unseen = int(cur[ref == 0].sum())
    out = {"unseen": unseen, "unseen_fraction": unseen / cur.sum() if cur.sum() else float("nan")}
    if cur.sum() == 0 or ref.sum() == 0:
        return {**out, "statistic": float("nan"), "p_value": float("nan")}
    if len(categories) < 2:  # one category on both sides: nothing can have moved
        return {**out, "statistic": 0.0, "p_value": 1.0}
    statistic, p_value, _dof, _expected = chi2_contingency(np.vstack([ref, cur]), correction=False)
    return {**out, "statistic": float(statistic), "p_value": float(p_value)}


def categorical_psi(reference: Sequence[str], current: Sequence[str], eps: float = EPSILON) -> float:
    """PSI over the aligned categories (an unseen category has reference share eps)."""
    _categories, ref, cur = category_counts(reference, current)
    return distribution_psi(ref, cur, eps)


def _judge(stat: float, p_value: float, psi_threshold: float, max_p: float) -> bool:
    return bool(np.isfinite(stat) and np.isfinite(p_value) and stat > psi_threshold and p_value < max_p)


def numeric_drift(name: str, reference: np.ndarray, current: np.ndarray, psi_threshold: float, p_value: float) -> dict:
    """PSI (with a bin for gaps) and KS of one numeric feature, and the verdict.
    A feature that arrives with no values at all, where the reference had
    some, drifted (a renamed or dropped column)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    value = psi(ref, cur)
    ks, p = ks_test(ref, cur)
    vanished = cur.size > 0 and not np.isfinite(cur).any() and np.isfinite(ref).any()
    return {
        "feature": name,
        "type": "numeric",
        "psi": value,
        "test": "ks",
        "statistic": ks,
        "p_value": p,
        "missing_fraction": float((~np.isfinite(cur)).mean()) if cur.size else float("nan"),
        "drifted": vanished or _judge(value, p, psi_threshold, p_value),
    }


def categorical_drift(
    name: str, reference: Sequence[str], current: Sequence[str], psi_threshold: float, p_value: float
) -> dict:
    """PSI and chi-squared of one categorical feature (missing = a category), and the verdict."""
    chi = chi2_test(reference, current)
    value = categorical_psi(reference, current)
    return {
        "feature": name,
        "type": "categorical",
        "psi": value,
        "test": "chi2",
        "statistic": chi["statistic"],
        "p_value": chi["p_value"],
        "unseen_fraction": chi["unseen_fraction"],
        "drifted": _judge(value, chi["p_value"], psi_threshold, p_value),
    }


def prediction_drift(
    reference_counts: dict[str, int], predicted: Sequence[str], psi_threshold: float, p_value: float
) -> dict:
    """Has the predicted-class mix moved? PSI over the classes (a class the
    reference never predicted counts with share eps) and chi-squared."""
    reference = np.repeat(np.array(list(reference_counts), dtype=object), list(reference_counts.values()))
    chi = chi2_test(reference, predicted)
    value = categorical_psi(reference, predicted)
    current = pd.Series(np.asarray(predicted, dtype=object)).value_counts(normalize=True)
    classes = list(reference_counts) + sorted(c for c in current.index if c not in reference_counts)
    return {
        "psi": value,
        "p_value": chi["p_value"],
        "shares": {c: float(current.get(c, 0.0)) for c in classes},
        "drifted": _judge(value, chi["p_value"], psi_threshold, p_value),
    }


def operational(
    ts: Sequence[float], latency_ms: Sequence[float], row: Sequence[int], window_s: float, errors: Optional[int] = None
) -> dict:
    """Latency percentiles per request (the rows of one request share its
    latency, so they count once: each request has a row 0), throughput over
    the window, and the error rate when the caller knows the failed requests."""
    ts = np.asarray(ts, dtype=np.float64)
    latency = np.asarray(latency_ms, dtype=np.float64)
    first = np.asarray(row) == 0
    per_request = latency[first] if first.any() else latency
    p50, p95, p99 = np.percentile(per_request, [50, 95, 99]) if per_request.size else (float("nan"),) * 3
    requests = int(first.sum())
    out = {
        "rows": int(ts.size),
        "requests": requests,
        "throughput_rows_per_s": ts.size / window_s,
        "requests_per_s": requests / window_s,
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
    }
    if errors is not None:
        out["error_rate"] = errors / (requests + errors) if requests + errors else 0.0
    return out


def live_quality(
    labels: Sequence[str],
    predicted: Sequence[str],
    probabilities: Optional[np.ndarray],
    classes: Sequence[str],
    n_bins: int = 15,
) -> dict:
    """Accuracy and macro-F1 of the predictions whose labels came back, and
    ECE (tasks.metrics) on the rows whose label is one of `classes` and whose
    probabilities are in that class order. `probabilities` rows may be NaN
    where the log held a different class list."""
    from sklearn.metrics import f1_score

    from tasks.metrics import expected_calibration_error

    labels = np.asarray(labels, dtype=object).astype(str)
    predicted = np.asarray(predicted, dtype=object).astype(str)
    nan = float("nan")
    out: dict[str, Any] = {"labeled_rows": int(labels.size), "accuracy": nan, "macro_f1": nan, "ece": nan}
    if labels.size == 0:
        return out
    out["accuracy"] = float(np.mean(labels == predicted))
    out["macro_f1"] = float(f1_score(labels, predicted, average="macro", zero_division=0))
    if probabilities is not None:
        index = {c: i for i, c in enumerate(classes)}
        label_idx = np.array([index.get(v, -1) for v in labels])
        probs = np.asarray(probabilities, dtype=np.float64)
        usable = (label_idx >= 0) & np.isfinite(probs).all(axis=1)
        if usable.any():
            out["ece"] = expected_calibration_error(probs[usable], label_idx[usable], n_bins)
    return out


# --------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    """The training-time distributions production is compared with."""

    kind: str  # image | tabular
    task: str  # multiclass | binary | regression | multilabel
    numeric: dict[str, np.ndarray]  # feature -> values (NaN = missing)
    categorical: dict[str, np.ndarray]  # feature -> string values (MISSING = missing)
    classes: list[str]
    predicted_counts: dict[str, int]  # class -> count, in class order; empty without one class per row
    predictions_from: str  # where predicted_counts came from, in words
    rows: int

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def image_summaries(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, over all its pixels in raw units: mean, std (population),
    min and max. The same definition as the server's log (deploy/predlog.py)."""
    flat = np.asarray(x).reshape(len(x), -1).astype(np.float64)
    return {"mean": flat.mean(1), "std": flat.std(1), "min": flat.min(1), "max": flat.max(1)}


def as_categories(values: pd.Series) -> np.ndarray:
    """Categorical values as the encoder compares them (tasks.preprocess.encode_table:
    astype("string")), missing ones as MISSING."""
    return values.astype("string").fillna(MISSING).to_numpy(dtype=object)


def _check_same_data(expected: str, actual: str, where: Path) -> None:
    if expected != actual:
        raise DistilleryError(f"{where}: the validated data is not the data data/processed was made from "
                              "(data_hash differs); rerun the pipeline (dvc repro) before monitoring")


CLASSIFIERS = ("multiclass", "binary")  # tasks whose log rows carry one predicted class


def reference_predictions(root: Path, meta: dict, champion: Optional[Path]) -> tuple[dict[str, int], str]:
    """The predicted-class mix to compare production with: the champion's
    predictions on the test split (the real class mix) through onnxruntime,
    or, without a champion file, the test split's labels. Empty for a task
    without one class per row (regression, multilabel)."""
    task = meta.get("task", "multiclass")
    if task not in CLASSIFIERS:
        return {}, f"none ({task} model: no predicted-class mix)"
    classes = meta["classes"]
    test = load_npz(root / paths.PROCESSED / "test.npz")
    x, y = test["x"], test["y"]
    if champion is not None and champion.exists():
        import onnxruntime as ort

        session = ort.InferenceSession(str(champion), providers=["CPUExecutionProvider"])
        (probs,) = session.run(["probabilities"], {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
        if probs.shape[1] == 1 and len(classes) == 2:  # a binary model's one sigmoid output: P(classes[1])
            probs = np.column_stack([1 - probs[:, 0], probs[:, 0]])
        if probs.shape[1] != len(classes):
            raise DistilleryError(f"{champion}: gives {probs.shape[1]} classes but data/processed has {len(classes)}; "
                                  "rerun the pipeline (dvc repro)")
        predicted, source = probs.argmax(axis=1), f"{champion.name} on the test split ({len(x)} rows)"
    else:
        predicted, source = np.asarray(y, dtype=np.int64), f"test-split labels ({len(y)} rows; no champion file)"
    counts = np.bincount(predicted, minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}, source


def build_reference(root: str | Path, champion: Optional[Path] = None) -> Reference:
    """The training reference of the model in `root`'s data/processed.

    Tables: every validated row (the population the splits were drawn from;
    before imputation and resampling), the encoder's columns by type. Images:
    the train split's summaries, or, when preprocess resampled it (duplicates,
    SMOTE blends: not what production looks like), every validated image."""
    root = Path(root)
    meta = read_json(root / paths.PROCESSED / paths.META, "processed data meta")
    if meta.get("kind") == "tabular":
        table_path = root / paths.VALIDATED / paths.TABLE
        if not table_path.exists():
            raise DistilleryError(f"{table_path}: not found; run the pipeline first (dvc repro)")
        validated = read_json(root / paths.VALIDATED / paths.META, "dataset meta")
        _check_same_data(meta["data_hash"], validated["data_hash"], table_path)
        rows = pd.read_parquet(table_path)
        encoder = meta["encoder"]
        numeric = {c: pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=np.float64) for c in encoder["numeric"]}
        categorical = {c: as_categories(rows[c]) for c in encoder["categorical"]}
        n_rows = len(rows)
    else:
        if meta.get("resample", "none") == "none":
            x = load_npz(root / paths.PROCESSED / "train.npz")["x"]
        else:
            arrays_path = root / paths.VALIDATED / paths.ARRAYS
            arrays = load_npz(arrays_path)
            _check_same_data(meta["data_hash"], hash_arrays(arrays["images"], arrays["labels"]), arrays_path)
            x = arrays["images"]
        numeric, categorical, n_rows = image_summaries(x), {}, len(x)
    counts, source = reference_predictions(root, meta, champion)
    return Reference(meta.get("kind", "image"), meta.get("task", "multiclass"), numeric, categorical,
                     list(meta.get("classes", [])), counts, source, n_rows)


# --------------------------------------------------------------------------- the prediction log and the labels


def _file_day_start(path: Path) -> Optional[float]:
    stem = path.stem.removeprefix("predictions-")
    try:
        return float(calendar.timegm(time.strptime(stem, "%Y%m%d")))  # the server names files by UTC day
    except ValueError:
        return None


def _connect(path: Path) -> sqlite3.Connection:
    # Read-write, like deploy.predlog.read_predictions, so that a WAL left by a
    # crashed server is recovered; the monitor itself never writes.
    db = sqlite3.connect(path, timeout=30)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "predictions" not in tables:
        db.close()
        raise DistilleryError(f"{path}: not a prediction log (no table 'predictions'); move it out of monitor.log_dir")
    return db


def read_log(log_dir: str | Path, since: Optional[float], until: float) -> pd.DataFrame:
    """Logged rows with since <= ts < until, oldest first, across the daily files
    under `log_dir`, subfolders included (one per server replica). A day's file
    holds rows answered that UTC day (a row answered just before midnight may be
    written just after), so files are skipped with a day's margin."""
    frames = []
    for path in sorted(Path(log_dir).rglob(LOG_GLOB)):
        day = _file_day_start(path)
        if day is not None and ((since is not None and day + 2 * 86400 <= since) or day - 86400 >= until):
            continue
        db = _connect(path)
        try:
            frames.append(pd.read_sql_query(
                "SELECT * FROM predictions WHERE ts >= ? AND ts < ? ORDER BY ts, id",
                db, params=(since if since is not None else -math.inf, until),
            ))
        finally:
            db.close()
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["ts", "request_id", "row", "endpoint", "model_name", "model_version", "inputs",
                                     "predicted", "probability", "probabilities", "latency_ms"])
    return pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)


def lookup_predictions(log_dir: str | Path, keys: pd.DataFrame) -> pd.DataFrame:
    """The logged rows for `keys` (request_id, row), from whichever day's file holds them."""
    columns = ["ts", "request_id", "row", "predicted", "probabilities"]
    frames = []
    if not keys.empty:
        wanted = keys[["request_id", "row"]].astype({"request_id": str, "row": int})
        records = list(wanted.itertuples(index=False, name=None))
        for path in sorted(Path(log_dir).rglob(LOG_GLOB)):
            db = _connect(path)
            try:
                db.execute("CREATE TEMP TABLE wanted (request_id TEXT, row INTEGER, PRIMARY KEY (request_id, row))")
                db.executemany("INSERT OR IGNORE INTO wanted VALUES (?, ?)", records)
                frames.append(pd.read_sql_query(
                    f"SELECT {', '.join('p.' + c for c in columns)} FROM predictions p "
                    "JOIN wanted w ON p.request_id = w.request_id AND p.row = w.row", db))
            finally:
                db.close()
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _read_feedback_file(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype={"request_id": str, "label": str})
        else:
            frame = pd.read_parquet(path)
    except Exception as err:  # pandas/pyarrow raise many parser error types
        raise DistilleryError(f"{path}: cannot read the feedback file ({type(err).__name__}: {err})") from err
    missing = [c for c in FEEDBACK_COLUMNS if c not in frame.columns]
    if missing:
        raise DistilleryError(f"{path}: feedback file lacks the columns {missing} (it needs {list(FEEDBACK_COLUMNS)})")
    rows = pd.to_numeric(frame["row"], errors="coerce")
    if rows.isna().any() or (rows % 1 != 0).any():
        bad = int(rows[rows.isna() | (rows % 1 != 0)].index[0])
        raise DistilleryError(f"{path}: row {bad}: 'row' must be a whole number (the row's index in its request)")
    return pd.DataFrame({"request_id": frame["request_id"].astype(str), "row": rows.astype(np.int64),
                         "label": frame["label"].astype(str)})


def read_feedback(feedback_dir: str | Path, seen: dict[str, int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Labels that arrived since the last run, and the new `seen` map.

    Feedback files (CSV or Parquet with request_id, row, label) are append-only:
    a new file, or the rows appended to a known one, are new labels. A file
    that shrank was replaced, and all of it counts as new. A label given twice
    for one (request_id, row) counts once, the last one."""
    folder = Path(feedback_dir)
    new, now_seen = [], {}
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in FEEDBACK_SUFFIXES) if folder.is_dir() else []
    for path in files:
        frame = _read_feedback_file(path)
        before = seen.get(path.name, 0)
        new.append(frame.iloc[before:] if before <= len(frame) else frame)
        now_seen[path.name] = len(frame)
    labels = pd.concat(new, ignore_index=True) if new else pd.DataFrame(columns=list(FEEDBACK_COLUMNS))
    return labels.drop_duplicates(["request_id", "row"], keep="last").reset_index(drop=True), now_seen


# --------------------------------------------------------------------------- windows and the verdict


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
    """The logged `inputs` JSON (a table row, or an image summary) as columns."""
    return pd.DataFrame.from_records([json.loads(s) for s in inputs], index=inputs.index)


def probability_matrix(probabilities: pd.Series, predicted: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """The logged probabilities as a rows x classes matrix; NaN rows where the
    model that answered had another class list (length, or argmax not `predicted`)."""
    out = np.full((len(probabilities), len(classes)), np.nan)
    names = np.asarray(classes, dtype=object)
    for i, (text, name) in enumerate(zip(probabilities, predicted)):
        values = json.loads(text)
        if len(values) == len(classes) and names[int(np.argmax(values))] == name:
            out[i] = values
    return out


def analyse_window(frame: pd.DataFrame, reference: Reference, params: MonitorParams, start: float) -> dict:
    """Everything measured on one window of logged rows, and whether it calls for retraining."""
    window_s = window_seconds(params)
    inputs = input_frame(frame["inputs"])
    features = []
    for name, ref in reference.numeric.items():
        current = pd.to_numeric(inputs[name], errors="coerce") if name in inputs else pd.Series(np.nan, index=frame.index)
        features.append(numeric_drift(name, ref, current.to_numpy(dtype=np.float64), params.psi_threshold, params.p_value))
    for name, ref in reference.categorical.items():
        current = inputs[name] if name in inputs else pd.Series(pd.NA, index=frame.index, dtype="string")
        features.append(categorical_drift(name, ref, as_categories(current), params.psi_threshold, params.p_value))
    errors = int((pd.to_numeric(frame["status"], errors="coerce") >= 400).sum()) if "status" in frame else None
    report = {
        "start": start,
        "end": start + window_s,
        "step": window_step(start, window_s),
        "models": sorted({f"{n}:{v}" for n, v in zip(frame["model_name"], frame["model_version"])}),
        "operations": operational(frame["ts"], frame["latency_ms"], frame["row"], window_s, errors),
        "mean_probability": float(frame["probability"].mean()),
        "features": features,
        "prediction": prediction_drift(reference.predicted_counts, frame["predicted"].astype(str),
                                       params.prediction_psi_threshold, params.p_value)
                      if reference.predicted_counts else None,
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
        reasons.append(f"{len(report['drifted_features'])}/{len(report['features'])} features drifted "
                       f"({', '.join(report['drifted_features'])}) > {params.max_drifted_fraction:.0%}")
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
    starts = np.floor(rows["ts"].to_numpy(dtype=np.float64) / window_s) * window_s
    return [analyse_window(group, reference, params, float(start)) for start, group in rows.groupby(starts, sort=True)]


def quality_of_labels(labels: pd.DataFrame, log_dir: str | Path, classes: Sequence[str], n_bins: int) -> dict:
    """Live quality of the predictions whose labels just arrived (joined on
    request_id + row); labels with no logged prediction are counted, not scored."""
    if labels.empty:
        return {"labeled_rows": 0, "unmatched_labels": 0}
    logged = lookup_predictions(log_dir, labels).drop_duplicates(["request_id", "row"], keep="last")
    joined = labels.merge(logged.astype({"row": np.int64}), on=["request_id", "row"], how="inner")
    out = live_quality(joined["label"], joined["predicted"],
                       probability_matrix(joined["probabilities"], joined["predicted"], classes) if len(joined) else None,
                       classes, n_bins)
    out["unmatched_labels"] = int(len(labels) - len(joined))
    return out


# --------------------------------------------------------------------------- state


@dataclass
class MonitorState:
    """What the monitor has done, in `monitor.state_file`.

    `watermark`: rows before it have been judged, and any retrain they called
    for was triggered; it moves only when a run succeeds. `logged_until`:
    windows before it are in MLflow, so a rerun after a failed trigger does not
    log them twice. `feedback`: rows of each feedback file already scored."""

    watermark: Optional[float] = None
    logged_until: Optional[float] = None
    feedback: dict[str, int] = field(default_factory=dict)


def read_state(path: str | Path) -> MonitorState:
    path = Path(path)
    if not path.exists():
        return MonitorState()
    data = read_json(path, "monitor state")
    try:
        feedback = {str(k): int(v) for k, v in data.get("feedback", {}).items()}
        return MonitorState(data.get("watermark"), data.get("logged_until"), feedback)
    except (AttributeError, TypeError, ValueError) as err:
        raise DistilleryError(f"{path}: not a monitor state file ({err}); delete it to re-read the whole log") from err


def write_state(path: str | Path, state: MonitorState) -> None:
    def stamp(ts: Optional[float]) -> Optional[str]:
        return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

    write_json(path, {"watermark": state.watermark, "watermark_utc": stamp(state.watermark),
                      "logged_until": state.logged_until, "logged_until_utc": stamp(state.logged_until),
                      "feedback": state.feedback})

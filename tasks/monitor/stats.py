"""Production monitoring: drift, operations and live quality, from the server's
prediction log. flows/monitor.py wires these; the statistics here are pure
(the reference, the log and the windows are in the other modules here).

What "drifted" means here: a feature drifted when its population stability
index (PSI) exceeds `monitor.psi_threshold` *and* its test (KS for numbers,
chi-squared for categories) gives a p-value below `monitor.p_value`. PSI says
the shift is big enough to matter, the test that it is not sampling noise: on
a 50-row window PSI alone is ~0.2 by chance over 10 bins, and on a 100k-row
window a p-value alone flags shifts too small to matter. The predicted-class
mix is judged the same way, against `monitor.prediction_psi_threshold`.

The reference is what the champion was trained on: for images, the per-image
summary {mean, std, min, max} of the train split, the very summary the server
logs (tasks.contracts.predlog.image_summary); for tables, the raw feature columns of the training
rows, typed by the encoder. The reference prediction mix is the champion's on
the test split (the real class mix; the train split may be resampled).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

PSI_BINS = 10  # reference-quantile bins: deciles, the usual choice for PSI
EPSILON = 1e-4  # share given to an empty bin, so that ln(q / p) stays finite
MISSING = "<missing>"  # a missing categorical value is a category of its own


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
    ECE (tasks.evaluation.metrics) on the rows whose label is one of `classes` and whose
    probabilities are in that class order. `probabilities` rows may be NaN
    where the log held a different class list."""
    from sklearn.metrics import f1_score

    from tasks.evaluation.metrics import expected_calibration_error

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

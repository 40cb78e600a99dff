"""The measures behind the project's custom expectations (expectations/custom.py),
in plain pandas, with no GX import: uniqueness (exact and near-duplicate rows)
and class balance. tasks.data.quality reports them with the other quality
dimensions, so the data-quality report and the gate measure the same thing.

Nothing here imports the project: tasks/ imports expectations/, never the
other way round.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def map_distinct(values: pd.Series, func) -> pd.Series:
    """Apply `func` to each distinct value once; missing stays missing."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.asarray([func(u) for u in uniques], dtype=object)
    out = mapped[np.where(codes < 0, 0, codes)] if len(mapped) else np.full(len(codes), None, dtype=object)
    out[codes < 0] = None
    return pd.Series(out, index=values.index, dtype=object)


def fold(value: str) -> str:
    """Case and whitespace folding: ' Human  resources' -> 'human resources'."""
    return " ".join(str(value).split()).casefold()


def duplicate_rows(df: pd.DataFrame, subset: list[str] | None = None) -> pd.Series:
    """Mask of rows that repeat an earlier row (on `subset` if given)."""
    if df.empty:
        return pd.Series(False, index=df.index)
    return df.duplicated(subset=subset or None, keep="first")


def near_duplicate_rows(df: pd.DataFrame, decimals: int = 2) -> pd.Series:
    """Rows equal to an earlier row once numbers are rounded and text folded,
    excluding exact duplicates. One hash pass: no pairwise comparison."""
    normalised = pd.DataFrame(index=df.index)
    for col in df.columns:
        values = df[col]
        if pd.api.types.is_numeric_dtype(values):
            normalised[col] = values.round(decimals)
        else:
            normalised[col] = map_distinct(values, lambda v: fold(v) if isinstance(v, str) else v)
    hashes = pd.util.hash_pandas_object(normalised, index=False)
    near = hashes.duplicated(keep="first")
    return near & ~duplicate_rows(df)


def class_balance(labels: pd.Series) -> dict[str, Any]:
    """Imbalance ratio (max/min count) and the Gini impurity and Shannon entropy
    of the class distribution, each normalised to [0, 1] by its maximum for k
    classes, so datasets with different class counts compare. 1 = balanced."""
    counts = labels.dropna().value_counts()
    k = len(counts)
    if k == 0:
        return {"counts": {}, "classes": 0, "imbalance_ratio": None, "gini": None, "normalized_entropy": None}
    p = counts.to_numpy() / counts.sum()
    gini = 1 - float((p**2).sum())
    entropy = -float((p * np.log(p)).sum())
    return {
        "counts": {str(k_): int(v) for k_, v in counts.items()},
        "classes": k,
        "imbalance_ratio": float(counts.max() / counts.min()),
        "gini": gini / (1 - 1 / k) if k > 1 else 0.0,
        "normalized_entropy": float(entropy / np.log(k)) if k > 1 else 0.0,
    }

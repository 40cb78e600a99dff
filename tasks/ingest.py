"""Stage 1, ingest: load the configured source into the canonical form.

The table holds one row per sample (id, label and a per-image summary that the
GX suite checks); the arrays hold the pixels, row-aligned with the table.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from tasks import paths
from tasks.config import DataParams, load_params
from tasks.core import hash_arrays, run_cli, write_summary
from tasks.dataset import Dataset, write_dataset
from tasks.sources import ImageData, load_digits, load_quickdraw, load_table


def load_source(params: DataParams) -> ImageData:
    if params.source == "digits":
        return load_digits(params.digits, params.seed)
    return load_quickdraw(params.path, params.quickdraw, params.seed)


def image_table(data: ImageData) -> pd.DataFrame:
    """One row per image: what a data-quality suite can check without the pixels."""
    n, height, width = data.images.shape
    flat = data.images.reshape(n, -1)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    return pd.DataFrame(
        {
            "row_id": np.arange(n, dtype=np.int64),
            "label": data.labels,
            "class_name": np.asarray(data.classes, dtype=object)[data.labels],
            "height": np.full(n, height, dtype=np.int64),
            "width": np.full(n, width, dtype=np.int64),
            "channels": np.ones(n, dtype=np.int64),
            "pixel_min": np.nanmin(finite, axis=1, initial=np.inf),
            "pixel_max": np.nanmax(finite, axis=1, initial=-np.inf),
            "n_missing": (~np.isfinite(flat)).sum(axis=1).astype(np.int64),
        }
    )


def hash_table(table: pd.DataFrame) -> str:
    """Content hash of a table: column names and every value."""
    digest = hashlib.sha256(repr(list(table.columns)).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def ingest_table(params: DataParams) -> Dataset:
    data = load_table(params.source, params.path, params.target, params.columns, params.encoding)
    table = data.table.copy()
    table.insert(0, "row_id", np.arange(len(table), dtype=np.int64))
    meta = {
        "source": params.source,
        "kind": "tabular",
        "origin": data.origin,
        "target": data.target,
        "columns": data.columns,
        "classes": list(params.classes) if params.classes else None,
        "rows": int(len(table)),
        "data_hash": hash_table(table),
    }
    return Dataset(table=table, arrays={}, meta=meta)


def ingest(params: DataParams) -> Dataset:
    if params.tabular:
        return ingest_table(params)
    data = load_source(params)
    table = image_table(data)
    meta = {
        "source": params.source,
        "kind": "image",
        "classes": list(data.classes),
        "image_shape": list(data.images.shape[1:]),
        "pixel_max": data.pixel_max,
        "rows": int(len(table)),
        "data_hash": hash_arrays(data.images, data.labels),
    }
    return Dataset(table=table, arrays={"images": data.images, "labels": data.labels}, meta=meta)


def main() -> None:
    params = load_params(paths.PARAMS).data
    dataset = ingest(params)
    write_dataset(paths.INGESTED, dataset)
    table, meta = dataset.table, dataset.meta
    if meta["kind"] == "tabular":
        shape = f"{len(table.columns) - 1} columns, target `{meta['target']}`"
        counts = table[meta["target"]].value_counts(dropna=False)
    else:
        shape = f"{len(meta['classes'])} classes, images {meta['image_shape']}"
        counts = table["class_name"].value_counts().reindex(meta["classes"]).fillna(0).astype(int)
    write_summary(
        "ingest",
        f"Loaded **{meta['rows']}** rows from `{params.source}` ({shape}).\n\n"
        f"Per class (as read): {', '.join(f'{c}={n}' for c, n in counts.items())}\n\n"
        f"Content hash: `{meta['data_hash'][:16]}`",
    )


if __name__ == "__main__":
    run_cli(main)

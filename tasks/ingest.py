"""Stage 1, ingest: load the configured source into the canonical form
(tasks.contracts.dataset).

The table holds one row per sample (id, label and a per-image summary that the
GX suite checks); the arrays hold the pixels, row-aligned with the table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.contracts.dataset import IMAGES, LABEL, LABELS, ROW_ID, Dataset, DatasetMeta, write_dataset
from tasks.core import paths
from tasks.core.errors import run_cli
from tasks.core.params import DataParams, load_params
from tasks.core.provenance import hash_arrays, hash_table
from tasks.core.report import write_summary
from tasks.data.sources import ImageData, load_digits, load_digits28, load_quickdraw, load_table

SECTIONS = ("data",)


def load_source(params: DataParams) -> ImageData:
    if params.source == "digits":
        return load_digits(params.digits, params.seed)
    if params.source == "digits28":
        return load_digits28(params.digits, params.digits28, params.seed)
    return load_quickdraw(params.path, params.quickdraw, params.seed)


def image_table(data: ImageData) -> pd.DataFrame:
    """One row per image: what a data-quality suite can check without the pixels."""
    n, height, width = data.images.shape
    flat = data.images.reshape(n, -1)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    return pd.DataFrame(
        {
            ROW_ID: np.arange(n, dtype=np.int64),
            LABEL: data.labels,
            "class_name": np.asarray(data.classes, dtype=object)[data.labels],
            "height": np.full(n, height, dtype=np.int64),
            "width": np.full(n, width, dtype=np.int64),
            "channels": np.ones(n, dtype=np.int64),
            "pixel_min": np.nanmin(finite, axis=1, initial=np.inf),
            "pixel_max": np.nanmax(finite, axis=1, initial=-np.inf),
            "n_missing": (~np.isfinite(flat)).sum(axis=1).astype(np.int64),
        }
    )


def ingest_table(params: DataParams) -> Dataset:
    data = load_table(params.source, params.path, params.target, params.columns, params.encoding)
    table = data.table.copy()
    table.insert(0, ROW_ID, np.arange(len(table), dtype=np.int64))
    meta = DatasetMeta(
        source=params.source, kind="tabular", rows=int(len(table)), data_hash=hash_table(table),
        classes=tuple(params.classes) if params.classes else None, origin=data.origin, target=data.target,
        declared_types=dict(data.columns), declared_columns=tuple(params.columns),
    )
    return Dataset(table=table, arrays={}, meta=meta)


def ingest(params: DataParams) -> Dataset:
    if params.tabular:
        return ingest_table(params)
    data = load_source(params)
    table = image_table(data)
    meta = DatasetMeta(
        source=params.source, kind="image", rows=int(len(table)), data_hash=hash_arrays(data.images, data.labels),
        classes=tuple(data.classes), image_shape=tuple(data.images.shape[1:]), pixel_max=data.pixel_max,
    )
    return Dataset(table=table, arrays={IMAGES: data.images, LABELS: data.labels}, meta=meta)


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS).data
    dataset = ingest(params)
    write_dataset(paths.INGESTED, dataset)
    table, meta = dataset.table, dataset.meta
    if meta.kind == "tabular":
        shape = f"{len(table.columns) - 1} columns, target `{meta.target}`"
        counts = table[meta.target].value_counts(dropna=False)
    else:
        shape = f"{len(meta.classes)} classes, images {list(meta.image_shape)}"
        counts = table["class_name"].value_counts().reindex(meta.classes).fillna(0).astype(int)
    write_summary(
        "ingest",
        f"Loaded **{meta.rows}** rows from `{params.source}` ({shape}).\n\n"
        f"Per class (as read): {', '.join(f'{c}={n}' for c, n in counts.items())}\n\n"
        f"Content hash: `{meta.data_hash[:16]}`",
    )


if __name__ == "__main__":
    run_cli(main)

"""Stage 1, ingest: load the configured source into the canonical form
(tasks.contracts.dataset).

The table holds one row per sample (id, label and a per-image summary that the
GX suite checks); the arrays hold the pixels, row-aligned with the table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.contracts.dataset import (
    IMAGES,
    LABEL,
    LABELS,
    ROW_ID,
    Dataset,
    DatasetMeta,
    write_dataset,
)
from tasks.contracts.production import Snapshot, read_snapshot
from tasks.core import paths
from tasks.core.errors import run_cli
from tasks.core.params import DataParams, load_params
from tasks.core.provenance import hash_arrays, hash_table
from tasks.core.report import write_summary
from tasks.core.task import IMAGE, TABLE, kind_of
from tasks.data.images import load_images, policy_of
from tasks.data.sources import (
    ImageData,
    load_digits,
    load_digits28,
    load_quickdraw,
    load_table,
)

SECTIONS = ("data",)


def load_source(params: DataParams) -> ImageData:
    if params.source == "images":
        found = load_images(params.path, params.images, params.seed)
        return ImageData(
            images=found.images, labels=found.labels, classes=found.classes, pixel_max=255.0, details=found.details
        )
    if params.source == "digits":
        return load_digits(params.digits, params.seed)
    if params.source == "digits28":
        return load_digits28(params.digits, params.digits28, params.seed)
    return load_quickdraw(params.path, params.quickdraw, params.seed)


def image_table(data: ImageData) -> pd.DataFrame:
    """One row per image: what a data-quality suite can check without the pixels."""
    n, height, width = data.images.shape[:3]
    channels = data.images.shape[3] if data.images.ndim == 4 else 1
    flat = data.images.reshape(n, -1).astype(np.float32)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    table = pd.DataFrame(
        {
            ROW_ID: np.arange(n, dtype=np.int64),
            LABEL: data.labels,
            "class_name": np.asarray(data.classes, dtype=object)[data.labels],
            "height": np.full(n, height, dtype=np.int64),
            "width": np.full(n, width, dtype=np.int64),
            "channels": np.full(n, channels, dtype=np.int64),
            "pixel_min": np.nanmin(finite, axis=1, initial=np.inf),
            "pixel_max": np.nanmax(finite, axis=1, initial=-np.inf),
            "n_missing": (~np.isfinite(flat)).sum(axis=1).astype(np.int64),
        }
    )
    # A folder of pictures adds each file's name, format, size and mode as stored, and why it could not be read.
    return table if data.details is None else pd.concat([table, data.details.reset_index(drop=True)], axis=1)


def production_rows(params: DataParams, source: pd.DataFrame) -> tuple[pd.DataFrame, Snapshot, int]:
    """The snapshot's rows in the source's columns (the newest, up to
    data.production.max_share per source row), the snapshot, and how many
    older rows the cap left out. Lineage columns and columns the source lacks
    are not the source's data, so they stay in the snapshot only."""
    snapshot = read_snapshot(params.production.path)
    rows = snapshot.rows
    cap = int(params.production.max_share * len(source))
    left_out = max(0, len(rows) - cap)
    rows = rows.iloc[len(rows) - min(cap, len(rows)) :]  # the snapshot is in answer order: the newest are last
    aligned = pd.DataFrame({c: rows[c] if c in rows else "" for c in source.columns}, index=rows.index)
    for column in source.columns:
        if not (pd.api.types.is_object_dtype(source[column]) or pd.api.types.is_string_dtype(source[column])):
            # sklearn's bundled tables are numeric: the snapshot's text becomes numbers; the server
            # only answered rows whose numeric features parse, so nothing turns missing here.
            aligned[column] = pd.to_numeric(aligned[column].replace("", np.nan), errors="coerce")
    return aligned.reset_index(drop=True), snapshot, left_out


def ingest_table(params: DataParams) -> Dataset:
    data = load_table(params.source, params.path, params.target, params.columns, params.encoding)
    production, snapshot, left_out = production_rows(params, data.table)
    table = pd.concat([data.table, production], ignore_index=True) if len(production) else data.table.copy()
    table.insert(0, ROW_ID, np.arange(len(table), dtype=np.int64))
    meta = DatasetMeta(
        source=params.source,
        name=params.name,
        kind=TABLE.name,
        rows=int(len(table)),
        data_hash=hash_table(table),
        classes=tuple(params.classes) if params.classes else None,
        origin=data.origin,
        target=data.target,
        declared_types=dict(data.columns),
        declared_columns=tuple(params.columns),
        production_rows=int(len(production)),
        production_snapshot=snapshot.sha256 if len(production) else None,
        production_left_out=left_out,
    )
    return Dataset(table=table, arrays={}, meta=meta)


def ingest(params: DataParams) -> Dataset:
    if params.tabular:
        return ingest_table(params)
    data = load_source(params)
    table = image_table(data)
    meta = DatasetMeta(
        source=params.source,
        name=params.name,
        kind=IMAGE.name,
        rows=int(len(table)),
        data_hash=hash_arrays(data.images, data.labels),
        classes=tuple(data.classes),
        image_shape=tuple(data.images.shape[1:]),
        pixel_max=data.pixel_max,
        image_policy=policy_of(params.images) if data.details is not None else None,
    )
    return Dataset(table=table, arrays={IMAGES: data.images, LABELS: data.labels}, meta=meta)


def main() -> None:
    all_params = load_params(paths.PARAMS, SECTIONS)
    params = all_params.data
    dataset = ingest(params)
    write_dataset(paths.INGESTED, dataset)
    table, meta = dataset.table, dataset.meta
    if kind_of(meta.kind).table:
        shape = f"{len(table.columns) - 1} columns, target `{meta.target}`"
        counts = table[meta.target].value_counts(dropna=False)
    else:
        shape = f"{len(meta.classes)} classes, images {list(meta.image_shape)}"
        counts = table["class_name"].value_counts().reindex(meta.classes).fillna(0).astype(int)
    write_summary(
        "ingest",
        f"Loaded **{meta.rows}** rows from `{params.source}` ({shape}).\n\n"
        f"Per class (as read): {', '.join(f'{c}={n}' for c, n in counts.items())}\n\n"
        f"Content hash: `{meta.data_hash[:16]}`{production_note(meta, params)}",
    )
    from tasks.core.tracking import log_stage

    log_stage(
        all_params.mlflow,
        "ingest",
        {"rows": meta.rows, "production_rows": meta.production_rows, "production_left_out": meta.production_left_out},
        {"data_source": params.source, "data_hash": meta.data_hash, "kind": meta.kind},
        (paths.SUMMARIES / "ingest.md",),
    )


def production_note(meta: DatasetMeta, params: DataParams) -> str:
    if not meta.production_rows and not meta.production_left_out:
        return ""
    left = (
        f"; {meta.production_left_out} older one(s) left out by data.production.max_share {params.production.max_share}"
        if meta.production_left_out
        else ""
    )
    return (
        f"\n\nOf these, **{meta.production_rows}** are labelled production rows from "
        f"`{params.production.path}` (snapshot `{(meta.production_snapshot or '')[:16]}`){left}."
    )


if __name__ == "__main__":
    run_cli(main)

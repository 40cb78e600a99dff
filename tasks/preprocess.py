"""Stage 3, preprocess: stratified train/val/test split, the table encoder and
normalisation stats, and resampling of the train split.

Everything is fitted on the train split only. Images keep raw pixel units;
tables are encoded by the fitted TableEncoder (tasks.contracts.encoder), the
one encoder training and serving share. Standardisation lives inside the
model's graph, so the exported ONNX cannot be fed differently from how it was
trained.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.contracts.dataset import IMAGES, LABEL, LABELS, ROW_ID, Dataset, read_dataset
from tasks.contracts.image import as_input
from tasks.contracts.processed import (
    ROW_IDS,
    ProcessedMeta,
    X,
    Y,
    save_split,
    write_meta,
)
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.params import DIGIT_SOURCES, PreprocessParams, load_params
from tasks.core.provenance import hash_arrays
from tasks.core.report import write_summary
from tasks.core.task import IMAGE, TABLE, kind_of, task_of
from tasks.data.encoding import fit_encoder
from tasks.data.quality import near_duplicate_groups
from tasks.data.sources import DIGIT_ATTRIBUTE_MATRIX, DIGIT_ATTRIBUTES
from tasks.data.split import keep_groups_together, label_counts, resample_train, split_indices

SECTIONS = ("task", "preprocess")
Splits = dict[str, dict[str, np.ndarray]]


def preprocess(dataset: Dataset, params: PreprocessParams, task: str) -> tuple[Splits, ProcessedMeta]:
    if kind_of(dataset.meta.kind).table:
        return preprocess_table(dataset, params, task)
    images = dataset.arrays[IMAGES].astype(np.float32)
    labels = dataset.arrays[LABELS].astype(np.int64)
    # N x C x H x W: one channel added, or a colour folder's channels moved first.
    x = as_input(images)
    classes = tuple(dataset.meta.classes)
    targets: np.ndarray = labels
    if task_of(task).multilabel:
        if dataset.meta.source not in DIGIT_SOURCES:
            raise DistilleryError(
                f"task.type 'multilabel' is wired for data.source {' or '.join(DIGIT_SOURCES)} "
                f"(labels: even, large, loop), not '{dataset.meta.source}'"
            )
        # Labels derived from the digit: even, at least 5, closed loop (tasks/data/sources.py).
        targets, classes = np.asarray(DIGIT_ATTRIBUTE_MATRIX, np.float32)[labels], DIGIT_ATTRIBUTES
    elif task_of(task).regression:
        raise DistilleryError("task.type 'regression' needs a table with a numeric target, not images")
    row_ids = dataset.table[ROW_ID].to_numpy()
    parts, grouped = split_indices(labels, params), 0
    if dataset.meta.image_policy is not None:
        # A folder of pictures: near duplicates (one dHash), the same photo resized or saved again, stay
        # on one side of the split. Not for the bundled arrays: at 8x8 or 28x28 the hash's 8x9 grid is
        # the drawing itself, so distinct simple drawings share one.
        parts, grouped = keep_groups_together(parts, near_duplicate_groups(images))
    splits = {name: {X: x[ix], Y: targets[ix], ROW_IDS: row_ids[ix]} for name, ix in parts.items()}
    train_x = splits["train"][X]
    if not task_of(task).multilabel and params.resample != "none":
        splits["train"][X], splits["train"][Y] = resample_train(
            train_x, splits["train"][Y], params.resample, params.seed
        )
        del splits["train"][ROW_IDS]  # resampled rows are no longer the dataset's rows
    meta = ProcessedMeta(
        kind=IMAGE.name,
        task=task,
        classes=tuple(classes),
        input_shape=tuple(x.shape[1:]),
        # Per-channel stats in raw units, from the train split alone (before resampling).
        mean=tuple(train_x.mean(axis=(0, 2, 3)).tolist()),
        std=tuple(np.maximum(train_x.std(axis=(0, 2, 3)), 1e-6).tolist()),
        data_hash=hash_arrays(images, labels),
        resample=params.resample,
        counts=label_counts(splits, len(classes), task),
        pixel_max=dataset.meta.pixel_max,
        image_policy=dataset.meta.image_policy,
        grouped_rows=grouped,
    )
    return splits, meta


def table_targets(
    table: pd.DataFrame, classes: tuple[str, ...], task: str, params: PreprocessParams
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The target per row, and the split: stratified on the class, or for
    regression on the target's quintiles, so every split sees its whole range."""
    if task_of(task).regression:
        targets = pd.to_numeric(table[LABEL], errors="coerce").to_numpy(dtype=np.float32)
        strata = pd.qcut(targets, q=min(5, max(1, len(targets) // 10)), labels=False, duplicates="drop")
        return targets, split_indices(np.asarray(strata, dtype=np.int64), params)
    if task_of(task).multilabel:
        raise DistilleryError("task.type 'multilabel' is wired for data.source 'digits' (labels: even, large, loop)")
    index = {name: i for i, name in enumerate(classes)}
    mapped = table[LABEL].astype(str).map(index)
    if mapped.isna().any():
        unknown = sorted(table.loc[mapped.isna(), LABEL].astype(str).unique())
        raise DistilleryError(f"validated labels {unknown} are not among the classes {list(classes)} (data.classes)")
    labels = mapped.to_numpy(dtype=np.int64)
    if task_of(task).binary and len(classes) != 2:
        raise DistilleryError(f"task.type binary needs exactly 2 classes, the data has {len(classes)}: {list(classes)}")
    return labels, split_indices(labels, params)


def preprocess_table(dataset: Dataset, params: PreprocessParams, task: str) -> tuple[Splits, ProcessedMeta]:
    table, classes = dataset.table, tuple(dataset.meta.classes or ())
    targets, parts = table_targets(table, classes, task, params)
    types = {c: t for c, t in dataset.meta.column_types.items() if c in dataset.meta.features}
    train = table.iloc[parts["train"]]
    encoder = fit_encoder(
        train, types, params.impute, params.knn_neighbors, params.seed, dataset.meta.date_formats, dataset.meta.reading
    )
    splits = {
        name: {X: encoder.encode(table.iloc[ix]), Y: targets[ix], ROW_IDS: table[ROW_ID].to_numpy()[ix]}
        for name, ix in parts.items()
    }
    train_x, train_y = splits["train"][X], splits["train"][Y]
    regression = task_of(task).regression
    if not regression and params.resample != "none":
        splits["train"][X], splits["train"][Y] = resample_train(train_x, train_y, params.resample, params.seed)
        del splits["train"][ROW_IDS]  # resampled rows are no longer the dataset's rows
    meta = ProcessedMeta(
        kind=TABLE.name,
        task=task,
        classes=classes,
        input_shape=(train_x.shape[1],),
        mean=tuple(train_x.mean(axis=0).tolist()),
        std=tuple(np.maximum(train_x.std(axis=0), 1e-6).tolist()),
        data_hash=dataset.meta.data_hash,
        resample=params.resample,
        counts=label_counts(splits, len(classes), task),
        encoder=encoder,
        # Regression: the model predicts in standardised units; the graph scales back to the target's.
        target_mean=float(train_y.mean()) if regression else 0.0,
        target_std=float(max(train_y.std(), 1e-6)) if regression else 1.0,
        production_rows=production_rows(dataset),
        production_snapshot=dataset.meta.production_snapshot,
    )
    return splits, meta


def production_rows(dataset: Dataset) -> int:
    """The labelled production rows that passed the gate: ingest numbers them after the source's rows."""
    first = dataset.meta.rows - dataset.meta.production_rows
    return int((dataset.table[ROW_ID] >= first).sum()) if dataset.meta.production_rows else 0


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS)
    splits, meta = preprocess(read_dataset(paths.VALIDATED), params.preprocess, params.task.type)
    for name, arrays in splits.items():
        save_split(name, arrays)
    write_meta(meta)
    sizes = ", ".join(f"{name} {len(s[Y])}" for name, s in splits.items())
    inputs = (
        f"{meta.input_shape[0]} encoded features" if kind_of(meta.kind).table else f"images {list(meta.input_shape)}"
    )
    write_summary(
        "preprocess",
        f"Stratified split: {sizes}; {inputs}; train resampling: {meta.resample} "
        f"(train class counts {list(meta.counts['train'])}).\n\nStandardisation fitted on train only."
        + (
            f"\n\nNear-duplicate pictures kept on one side of the split: {meta.grouped_rows} row(s) moved "
            "to the side holding most of their group (no near copy of a test picture in train)."
            if meta.grouped_rows
            else ""
        ),
    )
    from tasks.core.tracking import log_stage

    log_stage(
        params.mlflow,
        "preprocess",
        {f"rows_{name}": len(s[Y]) for name, s in splits.items()},
        {"data_hash": meta.data_hash, "task": meta.task, "resample": meta.resample},
    )


if __name__ == "__main__":
    run_cli(main)

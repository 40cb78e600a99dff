"""The training reference production is compared with: what the champion was
trained on, and what it predicts on the test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tasks.contracts import dataset as dataset_contract
from tasks.contracts.encoder import TableEncoder
from tasks.contracts.onnx import PREDICTION, PROBABILITIES
from tasks.contracts.predlog import CHANNELS, FORMAT, HEIGHT, WIDTH, image_summary
from tasks.contracts.processed import ProcessedMeta, load_split, read_meta
from tasks.core import paths
from tasks.core.errors import DistilleryError
from tasks.core.io import load_npz
from tasks.core.provenance import hash_arrays
from tasks.core.task import kind_of, task_of
from tasks.data import images
from tasks.monitor.stats import MISSING


@dataclass
class Reference:
    """The training-time distributions production is compared with."""

    kind: str  # image | tabular
    task: str  # multiclass | binary | regression | multilabel
    numeric: dict[str, np.ndarray]  # feature -> values (NaN = missing)
    categorical: dict[str, np.ndarray]  # feature -> string values (MISSING = missing)
    classes: list[str]
    predicted_counts: dict[str, int]  # class -> count, in class order; empty without one class per row
    predictions_from: str  # where the reference predictions came from, in words
    rows: int
    predicted_values: Optional[np.ndarray] = None  # regression: the champion's predictions on the test split
    # Tables: how the gate read the training cells, replayed on the logged rows before they are compared
    # (" mortgage " is MORTGAGE, "65,000 $" is 65000, as the server read them).
    encoder: Optional[TableEncoder] = None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def as_categories(values: pd.Series) -> np.ndarray:
    """Categorical values as the encoder compares them (tasks.contracts.encoder:
    astype("string")), missing ones as MISSING."""
    return values.astype("string").fillna(MISSING).to_numpy(dtype=object)


def _check_same_data(expected: str, actual: str, where: Path) -> None:
    if expected != actual:
        raise DistilleryError(
            f"{where}: the validated data is not the data data/processed was made from "
            "(data_hash differs); rerun the pipeline (dvc repro) before monitoring"
        )


def _champion_outputs(champion: Path, x: np.ndarray, output: str) -> np.ndarray:
    from tasks.onnx.runtime import run_batches, session

    return run_batches(session(champion), np.ascontiguousarray(x, dtype=np.float32), output=output)


def reference_predictions(
    root: Path, meta: ProcessedMeta, champion: Optional[Path]
) -> tuple[dict[str, int], Optional[np.ndarray], str]:
    """What production's answers are compared with: the champion's answers on
    the test split (the real class mix), through onnxruntime, or without a
    champion file the test split's labels. Classifiers: the predicted-class
    counts; regression: the predicted values; multilabel: none."""
    x, y = load_split("test", root / paths.PROCESSED)
    have = champion is not None and champion.exists()
    where = (
        f"{champion.name} on the test split ({len(x)} rows)"
        if have
        else f"test-split labels ({len(y)} rows; no champion file)"
    )
    if task_of(meta.task).regression:
        values = _champion_outputs(champion, x, PREDICTION).ravel() if have else np.asarray(y, dtype=np.float64)
        return {}, values, where
    if not task_of(meta.task).single_label:
        return {}, None, f"none ({meta.task} model: no predicted-class mix)"
    if have:
        probs = _champion_outputs(champion, x, PROBABILITIES)
        if probs.shape[1] != meta.n_classes:
            raise DistilleryError(
                f"{champion}: gives {probs.shape[1]} classes but data/processed has "
                f"{meta.n_classes}; rerun the pipeline (dvc repro)"
            )
        predicted = probs.argmax(axis=1)
    else:
        predicted = np.asarray(y, dtype=np.int64)
    counts = np.bincount(predicted, minlength=meta.n_classes)
    return {c: int(n) for c, n in zip(meta.classes, counts)}, None, where


def picture_reference(root: Path, numeric: dict, categorical: dict) -> None:
    """A folder of pictures: each validated file's size, channels and format as stored (ingest read
    them before the resize), under the names the server logs for a picture sent as a file
    (tasks.contracts.predlog.PICTURE). In place; nothing for pixel arrays (digits, Quick Draw)."""
    table_path = root / paths.VALIDATED / paths.TABLE
    stored = pd.read_parquet(table_path) if table_path.exists() else pd.DataFrame()
    if images.WIDTH not in stored:
        return
    numeric[WIDTH] = stored[images.WIDTH].to_numpy(dtype=np.float64)
    numeric[HEIGHT] = stored[images.HEIGHT].to_numpy(dtype=np.float64)
    categorical[CHANNELS] = as_categories(stored[images.SOURCE_CHANNELS].astype(str))
    categorical[FORMAT] = as_categories(stored[images.FORMAT])


def build_reference(root: str | Path, champion: Optional[Path] = None) -> Reference:
    """The training reference of the model in `root`'s data/processed.

    Tables: every validated row (the population the splits were drawn from;
    before imputation and resampling), the encoder's columns by type. Images:
    the train split's summaries, or, when preprocess resampled it (duplicates,
    SMOTE blends: not what production looks like), every validated image."""
    root = Path(root)
    meta = read_meta(root / paths.PROCESSED)
    if kind_of(meta.kind).table:
        table_path = root / paths.VALIDATED / paths.TABLE
        if not table_path.exists():
            raise DistilleryError(f"{table_path}: not found; run the pipeline first (dvc repro)")
        validated = dataset_contract.read_meta(root / paths.VALIDATED)
        _check_same_data(meta.data_hash, validated.data_hash, table_path)
        rows = pd.read_parquet(table_path)
        encoder = meta.encoder
        numeric = {c: pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=np.float64) for c in encoder.numeric}
        categorical = {c: as_categories(rows[c]) for c in encoder.categorical}
        n_rows = len(rows)
    else:
        if meta.resample == "none":
            x, _ = load_split("train", root / paths.PROCESSED)
        else:
            arrays_path = root / paths.VALIDATED / paths.ARRAYS
            arrays = load_npz(arrays_path)
            images, labels = arrays[dataset_contract.IMAGES], arrays[dataset_contract.LABELS]
            _check_same_data(meta.data_hash, hash_arrays(images, labels), arrays_path)
            x = images
        numeric, categorical, n_rows = image_summary(x), {}, len(x)
        picture_reference(root, numeric, categorical)
    counts, values, source = reference_predictions(root, meta, champion)
    encoder = meta.encoder if kind_of(meta.kind).table else None
    return Reference(
        meta.kind, meta.task, numeric, categorical, list(meta.classes), counts, source, n_rows, values, encoder
    )

"""data/processed: the train/val/test splits and the meta every later stage
reads (what the data is, the task, the classes, the normalisation and, for
tables, the encoder)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from tasks.contracts.encoder import TableEncoder
from tasks.contracts.image import ImagePolicy
from tasks.core import paths
from tasks.core.config import parse
from tasks.core.errors import DistilleryError
from tasks.core.io import load_npz, read_json, save_npz, write_json
from tasks.core.task import TaskType, kind_of

X, Y, ROW_IDS = "x", "y", "row_id"  # the arrays of a split file


@dataclass(frozen=True)
class ProcessedMeta:
    kind: Literal["image", "tabular"]
    task: TaskType
    classes: tuple[str, ...]  # class names (label names for multilabel; empty for regression)
    input_shape: tuple[int, ...]  # one sample as the model takes it: C, H, W (images) or F (tables)
    mean: tuple[float, ...]  # per channel (images) or encoded feature (tables), train split, raw units
    std: tuple[float, ...]
    data_hash: str  # the validated data the splits were made from
    resample: str  # preprocess.resample applied to the train split
    counts: dict[str, tuple[int, ...]]  # per split: samples per class, positives per label, or [rows]
    pixel_max: Optional[float] = None  # images: the top of the pixel range
    image_policy: Optional[ImagePolicy] = None  # a folder of pictures: how a file becomes the input (replayed to serve)
    encoder: Optional[TableEncoder] = None  # tables: how raw rows become the model's input
    target_mean: float = 0.0  # regression: the model predicts standardised units; the graph scales back
    target_std: float = 1.0
    production_rows: int = 0  # labelled production rows among the validated rows (lineage)
    production_snapshot: Optional[str] = None  # the production snapshot they came from (sha256 of rows.csv)
    grouped_rows: int = 0  # pictures: rows moved so that each near-duplicate group sits on one side of the split

    def __post_init__(self) -> None:
        if kind_of(self.kind).table and self.encoder is None:
            raise ValueError("a tabular dataset needs its encoder")
        if kind_of(self.kind).image and self.pixel_max is None:
            raise ValueError("an image dataset needs pixel_max")
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have one value per channel or feature")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.encoder.feature_names if self.encoder is not None else ()


def write_meta(meta: ProcessedMeta, folder: str | Path = paths.PROCESSED) -> None:
    write_json(Path(folder) / paths.META, dataclasses.asdict(meta))


def read_meta(folder: str | Path = paths.PROCESSED) -> ProcessedMeta:
    path = Path(folder) / paths.META
    return parse(ProcessedMeta, read_json(path, "processed meta"), str(path))


def save_split(name: str, arrays: dict[str, np.ndarray], folder: str | Path = paths.PROCESSED) -> None:
    save_npz(Path(folder) / f"{name}.npz", **arrays)


def load_split(name: str, folder: str | Path = paths.PROCESSED) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one processed split."""
    arrays = load_split_arrays(name, folder)
    return arrays[X], arrays[Y]


def load_split_arrays(name: str, folder: str | Path = paths.PROCESSED) -> dict[str, np.ndarray]:
    path = Path(folder) / f"{name}.npz"
    arrays = load_npz(path)
    missing = [k for k in (X, Y) if k not in arrays]
    if missing:
        raise DistilleryError(f"{path}: a split needs the arrays {missing}; rerun preprocess (dvc repro)")
    return arrays

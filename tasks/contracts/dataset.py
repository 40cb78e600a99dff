"""The dataset folder (data/ingested, data/validated, data/quarantine): a
table (one row per sample, `row_id` first), row-aligned arrays (images and
labels), and the meta that describes them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd

from tasks.contracts.encoder import Reading
from tasks.contracts.image import ImagePolicy
from tasks.core import paths
from tasks.core.config import parse
from tasks.core.errors import DistilleryError
from tasks.core.io import atomic_path, load_npz, read_json, save_npz, write_json
from tasks.core.task import TaskType

ROW_ID = "row_id"  # every table's first column: the sample's identity, kept through every stage
LABEL = "label"  # the target, under one name whatever the user called it (meta.target)
REASON = "reason"  # quarantine only: why each row is there
IMAGES, LABELS = "images", "labels"  # the arrays of an image dataset


@dataclass(frozen=True)
class DatasetMeta:
    source: str  # params.yaml data.source
    kind: Literal["image", "tabular"]
    rows: int
    data_hash: str  # content hash of what was ingested (tasks.core.provenance)
    name: Optional[str] = None  # data.name: what the data is called; names the default registered model
    classes: Optional[tuple[str, ...]] = None  # images: the class names; tables: declared (ingest), found (validate)
    origin: Optional[str] = None  # tables: the file (or bundled set) they were read from
    target: Optional[str] = None  # tables: the target column as the user named it
    declared_types: dict[str, str] = field(default_factory=dict)  # tables: data.columns over the source's own types
    declared_columns: tuple[str, ...] = ()  # tables: the columns the user declared in data.columns
    image_shape: Optional[tuple[int, ...]] = None  # images: H, W (one channel) or H, W, C
    pixel_max: Optional[float] = None  # images: the top of the pixel range (16 digits, 255 bitmaps)
    image_policy: Optional[ImagePolicy] = None  # a folder of pictures: how each file became its pixels
    # Tables: labelled production rows appended after the source's (tasks.contracts.production).
    production_rows: int = 0
    production_snapshot: Optional[str] = None  # sha256 of the snapshot's rows.csv they came from
    production_left_out: int = 0  # older snapshot rows over data.production.max_share
    # Set by validate:
    task: Optional[TaskType] = None
    column_types: dict[str, str] = field(default_factory=dict)  # every column's type after correction
    features: tuple[str, ...] = ()  # the columns the model takes (numeric, boolean, datetime and categorical)
    date_formats: dict[str, str] = field(default_factory=dict)  # datetime column -> its format (pd.to_datetime)
    reading: Optional[Reading] = None  # the gate's corrections of raw cells, which serving replays

    def replace(self, **changes: Any) -> "DatasetMeta":
        return dataclasses.replace(self, **changes)


@dataclass
class Dataset:
    table: pd.DataFrame  # one row per sample, `row_id` first
    arrays: dict[str, np.ndarray]  # row-aligned with the table
    meta: DatasetMeta


def write_dataset(folder: str | Path, dataset: Dataset) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / paths.TABLE) as tmp:
        dataset.table.to_parquet(tmp, index=False)
    save_npz(folder / paths.ARRAYS, **dataset.arrays)
    write_json(folder / paths.META, dataclasses.asdict(dataset.meta))


def read_meta(folder: str | Path) -> DatasetMeta:
    path = Path(folder) / paths.META
    return parse(DatasetMeta, read_json(path, "dataset meta"), str(path))


def read_dataset(folder: str | Path) -> Dataset:
    folder = Path(folder)
    table_path = folder / paths.TABLE
    if not table_path.exists():
        raise DistilleryError(f"{table_path}: not found; run the stage that writes it first (dvc repro)")
    table = pd.read_parquet(table_path)
    arrays = load_npz(folder / paths.ARRAYS)
    for name, array in arrays.items():
        if len(array) != len(table):
            raise DistilleryError(
                f"{folder / paths.ARRAYS}: array '{name}' has {len(array)} rows but the table has {len(table)}"
            )
    return Dataset(table=table, arrays=arrays, meta=read_meta(folder))

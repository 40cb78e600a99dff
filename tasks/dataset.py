"""Reading and writing the canonical dataset folder: table + arrays + meta."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks import paths
from tasks.core import DistilleryError, atomic_path, load_npz, read_json, save_npz, write_json


@dataclass
class Dataset:
    table: pd.DataFrame  # one row per sample, `row_id` first
    arrays: dict[str, np.ndarray]  # row-aligned with the table
    meta: dict


def write_dataset(folder: str | Path, dataset: Dataset) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / paths.TABLE) as tmp:
        dataset.table.to_parquet(tmp, index=False)
    save_npz(folder / paths.ARRAYS, **dataset.arrays)
    write_json(folder / paths.META, dataset.meta)


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
    return Dataset(table=table, arrays=arrays, meta=read_json(folder / paths.META, "dataset meta"))

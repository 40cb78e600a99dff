"""tasks/contracts/dataset.py: the canonical table + arrays + meta folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.contracts.dataset import Dataset, DatasetMeta, read_dataset, read_meta, write_dataset
from tasks.core.errors import DistilleryError
from tasks.core.io import save_npz


def small_dataset() -> Dataset:
    table = pd.DataFrame({"row_id": np.arange(4, dtype=np.int64), "label": [0, 1, 0, 1]})
    arrays = {"images": np.arange(16, dtype=np.float32).reshape(4, 2, 2), "labels": np.array([0, 1, 0, 1])}
    meta = DatasetMeta(
        source="digits", kind="image", rows=4, data_hash="abc", classes=("a", "b"), image_shape=(2, 2), pixel_max=16.0
    )
    return Dataset(table=table, arrays=arrays, meta=meta)


def tabular_meta() -> DatasetMeta:
    """Every field set away from its default, so a lost or mistyped field shows."""
    return DatasetMeta(
        source="csv",
        kind="tabular",
        rows=3,
        data_hash="f00d",
        classes=("no", "yes"),
        origin="data/raw/x.csv",
        target="Outcome",
        declared_types={"age": "numeric", "city": "categorical"},
        declared_columns=("age", "city"),
        task="binary",
        column_types={"age": "numeric", "city": "categorical", "note": "text"},
        features=("age", "city"),
    )


def test_write_read_round_trip(tmp_path):
    dataset = small_dataset()
    write_dataset(tmp_path / "ds", dataset)
    back = read_dataset(tmp_path / "ds")
    pd.testing.assert_frame_equal(back.table, dataset.table)
    assert set(back.arrays) == {"images", "labels"}
    np.testing.assert_array_equal(back.arrays["images"], dataset.arrays["images"])
    assert isinstance(back.meta, DatasetMeta)
    assert back.meta == dataset.meta


def test_a_tabular_meta_round_trips_with_every_field(tmp_path):
    meta = tabular_meta()
    table = pd.DataFrame(
        {
            "row_id": np.arange(3, dtype=np.int64),
            "label": ["no", "yes", "no"],
            "age": [1.0, 2.0, np.nan],
            "city": ["a", None, "b"],
            "note": ["x", "y", "z"],
        }
    )
    write_dataset(tmp_path / "ds", Dataset(table=table, arrays={}, meta=meta))
    back = read_dataset(tmp_path / "ds")
    assert back.meta == meta
    assert read_meta(tmp_path / "ds") == meta
    # Typed on the way back, not left as JSON lists.
    assert isinstance(back.meta.classes, tuple) and isinstance(back.meta.features, tuple)
    assert back.arrays == {}
    pd.testing.assert_frame_equal(back.table, table)


def test_read_dataset_refuses_an_unknown_meta_key(tmp_path):
    write_dataset(tmp_path / "ds", small_dataset())
    path = tmp_path / "ds" / "meta.json"
    raw = json.loads(path.read_text())
    raw["clases"] = ["a", "b"]
    path.write_text(json.dumps(raw))
    with pytest.raises(DistilleryError) as err:
        read_dataset(tmp_path / "ds")
    message = str(err.value)
    assert str(path) in message
    assert "'clases'" in message and "unknown key" in message
    assert "did you mean 'classes'?" in message


def test_read_dataset_names_a_missing_table(tmp_path):
    with pytest.raises(DistilleryError) as err:
        read_dataset(tmp_path / "ds")
    assert str(tmp_path / "ds" / "table.parquet") in str(err.value)


def test_read_dataset_refuses_arrays_not_aligned_with_the_table(tmp_path):
    dataset = small_dataset()
    write_dataset(tmp_path / "ds", dataset)
    save_npz(tmp_path / "ds" / "arrays.npz", images=dataset.arrays["images"][:3], labels=dataset.arrays["labels"])
    with pytest.raises(DistilleryError) as err:
        read_dataset(tmp_path / "ds")
    assert "'images'" in str(err.value) and "3 rows" in str(err.value) and "4" in str(err.value)
    assert str(tmp_path / "ds" / "arrays.npz") in str(err.value)


def test_read_dataset_names_missing_meta(tmp_path):
    write_dataset(tmp_path / "ds", small_dataset())
    (tmp_path / "ds" / "meta.json").unlink()
    with pytest.raises(DistilleryError, match="meta.json"):
        read_dataset(tmp_path / "ds")

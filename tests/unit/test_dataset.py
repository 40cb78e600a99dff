"""tasks/dataset.py: the canonical table + arrays + meta folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.core.errors import DistilleryError
from tasks.core.io import save_npz
from tasks.contracts.dataset import Dataset, read_dataset, write_dataset


def small_dataset() -> Dataset:
    table = pd.DataFrame({"row_id": np.arange(4, dtype=np.int64), "label": [0, 1, 0, 1]})
    arrays = {"images": np.arange(16, dtype=np.float32).reshape(4, 2, 2), "labels": np.array([0, 1, 0, 1])}
    return Dataset(table=table, arrays=arrays, meta={"classes": ["a", "b"], "rows": 4})


def test_write_read_round_trip(tmp_path):
    dataset = small_dataset()
    write_dataset(tmp_path / "ds", dataset)
    back = read_dataset(tmp_path / "ds")
    pd.testing.assert_frame_equal(back.table, dataset.table)
    assert set(back.arrays) == {"images", "labels"}
    np.testing.assert_array_equal(back.arrays["images"], dataset.arrays["images"])
    assert back.meta == dataset.meta


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

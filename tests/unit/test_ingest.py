"""tasks/ingest.py: the per-image summary table and the ingest function."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO_ROOT, params_section

from tasks.contracts.dataset import DatasetMeta
from tasks.core.params import QuickDrawParams
from tasks.core.provenance import hash_arrays, hash_table
from tasks.data.gate import load_suite
from tasks.data.sources import ImageData
from tasks.ingest import image_table, ingest


@pytest.fixture
def small_images() -> ImageData:
    images = np.array(
        [
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
            [[7.0, np.nan, 9.0], [1.0, 2.0, 3.0]],
            [[np.inf, 5.0, 6.0], [np.nan, -np.inf, 4.0]],
            [[16.0, 16.0, 16.0], [16.0, 16.0, 16.0]],
        ],
        dtype=np.float32,
    )
    return ImageData(
        images=images, labels=np.array([2, 0, 1, 2], dtype=np.int64), classes=("a", "b", "c"), pixel_max=16.0
    )


def test_image_table_has_the_columns_the_suites_check(small_images):
    table = image_table(small_images)
    for suite in ("digits", "quickdraw"):
        expected = load_suite(REPO_ROOT / "expectations" / f"{suite}.json")["expectations"][0]
        assert expected["type"] == "expect_table_columns_to_match_ordered_list"
        assert list(table.columns) == expected["kwargs"]["column_list"]


def test_image_table_rows_describe_each_image(small_images):
    table = image_table(small_images)
    assert len(table) == 4
    assert table["row_id"].tolist() == [0, 1, 2, 3]
    assert table["label"].tolist() == [2, 0, 1, 2]
    assert table["class_name"].tolist() == ["c", "a", "b", "c"]
    assert table["height"].tolist() == [2] * 4
    assert table["width"].tolist() == [3] * 4
    assert table["channels"].tolist() == [1] * 4
    # Missing = NaN or infinite; min and max are over the finite pixels only.
    assert table["n_missing"].tolist() == [0, 1, 3, 0]
    assert table["pixel_min"].tolist() == [0.0, 1.0, 4.0, 16.0]
    assert table["pixel_max"].tolist() == [5.0, 9.0, 6.0, 16.0]


def test_image_table_does_not_change_the_images(small_images):
    before = small_images.images.copy()
    image_table(small_images)
    np.testing.assert_array_equal(small_images.images, before)  # NaN-aware equality


def test_ingest_quickdraw_keeps_table_and_arrays_row_aligned(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("apple", "cat"):
        np.save(tmp_path / f"{name}.npy", rng.integers(0, 256, size=(10, 784), dtype=np.uint8))
    params = params_section(
        "data",
        source="quickdraw",
        path=str(tmp_path),
        seed=0,
        quickdraw=QuickDrawParams(classes=("apple", "cat"), samples_per_class={"apple": 4, "cat": 6}),
    )
    dataset = ingest(params)
    images, labels = dataset.arrays["images"], dataset.arrays["labels"]
    assert len(dataset.table) == len(images) == len(labels) == 10
    np.testing.assert_array_equal(dataset.table["label"], labels)
    np.testing.assert_array_equal(dataset.table["pixel_max"], images.reshape(10, -1).max(axis=1))
    assert dataset.meta.source == "quickdraw" and dataset.meta.kind == "image"
    assert dataset.meta.classes == ("apple", "cat")
    assert dataset.meta.image_shape == (28, 28)
    assert dataset.meta.pixel_max == 255.0
    assert dataset.meta.rows == 10
    assert dataset.meta.data_hash == hash_arrays(images, labels)


def test_ingest_csv_records_what_validate_needs_in_the_meta(tmp_path):
    # validate reads the target, the declared types and columns and the classes
    # from the ingested meta (no longer from params.yaml), so ingest must put them there.
    path = tmp_path / "people.csv"
    path.write_text("age,city,outcome\n31,Oslo,yes\nNA,Bergen,no\n40 y,Oslo,yes\n")
    params = params_section(
        "data", source="csv", path=str(path), target="outcome", columns={"age": "numeric"}, classes=("no", "yes")
    )
    dataset = ingest(params)
    assert dataset.table.columns.tolist() == ["row_id", "age", "city", "outcome"]
    assert dataset.table["row_id"].tolist() == [0, 1, 2]
    assert dataset.table["age"].tolist() == ["31", "NA", "40 y"]  # text as written, for the gate to judge
    assert dataset.arrays == {}
    assert dataset.meta == DatasetMeta(
        source="csv",
        name="people",
        kind="tabular",
        rows=3,
        data_hash=hash_table(dataset.table),
        classes=("no", "yes"),
        origin=str(path),
        target="outcome",
        declared_types={"age": "numeric"},
        declared_columns=("age",),
    )

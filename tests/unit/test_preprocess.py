"""tasks/preprocess.py and tasks/data/split.py: the stratified split and the train-only normalisation stats."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import params_section

from tasks.contracts.dataset import Dataset, DatasetMeta
from tasks.contracts.image import ImagePolicy
from tasks.contracts.processed import ProcessedMeta
from tasks.core.provenance import hash_arrays
from tasks.data.split import keep_groups_together, split_indices
from tasks.preprocess import preprocess

PARAMS = params_section("preprocess", val_fraction=0.15, test_fraction=0.2, seed=42)
COUNTS = (200, 100, 20)


def imbalanced_labels(counts=COUNTS) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(0).permutation(labels).astype(np.int64)


def make_dataset(labels: np.ndarray) -> Dataset:
    """Each image holds its own row index in every pixel, so rows can be traced;
    the class shifts the pixel values so the classes differ."""
    n = len(labels)
    images = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], 8, axis=1).repeat(8, axis=2)
    images += 1000.0 * labels[:, None, None]
    meta = DatasetMeta(
        source="digits",
        kind="image",
        rows=n,
        data_hash="test",
        classes=tuple(f"c{i}" for i in range(labels.max() + 1)),
        image_shape=(8, 8),
        pixel_max=16.0,
    )
    table = pd.DataFrame({"row_id": np.arange(n, dtype=np.int64)})
    return Dataset(table=table, arrays={"images": images, "labels": labels}, meta=meta)


def test_splits_are_disjoint_and_cover_every_row():
    labels = imbalanced_labels()
    splits = split_indices(labels, PARAMS)
    assert set(splits) == {"train", "val", "test"}
    joined = np.concatenate(list(splits.values()))
    assert len(joined) == len(labels)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))


def test_split_sizes_follow_the_fractions():
    labels = imbalanced_labels()
    splits = split_indices(labels, PARAMS)
    n = len(labels)
    assert abs(len(splits["val"]) - PARAMS.val_fraction * n) <= 3
    assert abs(len(splits["test"]) - PARAMS.test_fraction * n) <= 3


@pytest.mark.parametrize("seed", range(8))
def test_splits_keep_class_proportions(seed):
    labels = imbalanced_labels()
    class_counts = np.bincount(labels)
    params = params_section("preprocess", val_fraction=0.15, test_fraction=0.2, seed=seed)
    for name, idx in split_indices(labels, params).items():
        split_share = len(idx) / len(labels)
        per_class = np.bincount(labels[idx], minlength=len(COUNTS))
        # Stratified: each class contributes its own share to each split, to within rounding.
        assert np.all(np.abs(per_class - split_share * class_counts) <= 1.5), (name, per_class)
        assert np.all(per_class >= 1), name  # the rare class is in every split


def test_split_is_deterministic_for_a_seed():
    labels = imbalanced_labels()
    first, again = split_indices(labels, PARAMS), split_indices(labels, PARAMS)
    other = split_indices(labels, params_section("preprocess", val_fraction=0.15, test_fraction=0.2, seed=7))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["test"], other["test"])


@pytest.mark.parametrize("rare", [1, 2, 3, 4, 5, 6])
def test_a_class_too_rare_to_stratify_is_dealt_train_first_not_refused(rare):
    # The gate decides how few rows a class may have (validate.min_class_rows); the split
    # must not refuse what the gate let through. With val 0.15 a class needs 7 rows to be
    # stratified; fewer are dealt by hand: train, test, val, then train again.
    labels = imbalanced_labels((100, 100, rare))
    splits = split_indices(labels, PARAMS)
    joined = np.sort(np.concatenate(list(splits.values())))
    np.testing.assert_array_equal(joined, np.arange(len(labels)))  # every row, once
    got = {name: int((labels[idx] == 2).sum()) for name, idx in splits.items()}
    assert got == {"train": rare - min(rare - 1, 2), "test": int(rare >= 2), "val": int(rare >= 3)}
    # The other classes are stratified as before.
    assert all((np.bincount(labels[idx], minlength=3)[:2] >= 10).all() for idx in splits.values())
    again = split_indices(labels, PARAMS)
    assert all(np.array_equal(splits[name], again[name]) for name in splits)  # and seeded


def test_data_with_no_rare_class_is_split_as_before():
    # Only rare classes take the new path: sklearn's stratified split of the rest is unchanged.
    from sklearn.model_selection import train_test_split

    labels = imbalanced_labels()
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.35, stratify=labels, random_state=42)
    np.testing.assert_array_equal(split_indices(labels, PARAMS)["train"], np.sort(train))


def test_an_absent_class_in_the_middle_is_allowed():
    labels = imbalanced_labels((40, 0, 40))
    splits = split_indices(labels, PARAMS)
    assert sum(len(v) for v in splits.values()) == 80


def test_preprocess_keeps_rows_aligned_and_adds_a_channel():
    labels = imbalanced_labels()
    dataset = make_dataset(labels)
    splits, meta = preprocess(dataset, PARAMS, "multiclass")
    for name, idx in split_indices(labels, PARAMS).items():
        x, y = splits[name]["x"], splits[name]["y"]
        assert x.shape == (len(idx), 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], dataset.arrays["images"][idx])
        np.testing.assert_array_equal(y, labels[idx])
    assert isinstance(meta, ProcessedMeta)
    assert meta.kind == "image" and meta.task == "multiclass"
    assert meta.input_shape == (1, 8, 8)
    assert meta.classes == dataset.meta.classes
    assert meta.pixel_max == dataset.meta.pixel_max
    assert meta.data_hash == hash_arrays(dataset.arrays["images"], labels)
    for name in ("train", "val", "test"):
        assert list(meta.counts[name]) == np.bincount(labels[split_indices(labels, PARAMS)[name]], minlength=3).tolist()


def test_normalisation_stats_come_from_the_train_split_only():
    labels = imbalanced_labels()
    dataset = make_dataset(labels)
    images = dataset.arrays["images"]
    _, meta = preprocess(dataset, PARAMS, "multiclass")
    train = images[split_indices(labels, PARAMS)["train"]]
    np.testing.assert_allclose(meta.mean, [train.mean()], rtol=1e-6)
    np.testing.assert_allclose(meta.std, [train.std()], rtol=1e-5)
    assert abs(meta.mean[0] - images.mean()) > 1e-3  # not the whole data's


def test_a_constant_image_set_gets_a_positive_std():
    labels = imbalanced_labels((10, 10))
    dataset = make_dataset(labels)
    dataset.arrays["images"][:] = 5.0
    _, meta = preprocess(dataset, PARAMS, "multiclass")
    assert meta.mean == (5.0,)
    assert meta.std[0] > 0


def test_each_split_keeps_the_row_ids_of_its_images():
    dataset = make_dataset(imbalanced_labels())
    splits, _ = preprocess(dataset, params_section("preprocess", resample="none"), "multiclass")
    for split in splits.values():
        # Every pixel of an image holds its row index (mod the class offset).
        assert (split["x"][:, 0, 0, 0] % 1000 == split["row_id"]).all()


def test_a_group_split_across_sides_moves_whole_to_the_side_holding_most_of_it():
    parts = {"train": np.array([0, 1, 2, 5]), "val": np.array([3]), "test": np.array([4, 6])}
    groups = np.array([0, 0, 1, 1, 2, 3, 2])  # 0 in train; 1 train + val (tie: train); 2 test twice; 3 train
    kept, moved = keep_groups_together(parts, groups)
    assert {k: v.tolist() for k, v in kept.items()} == {"train": [0, 1, 2, 3, 5], "val": [], "test": [4, 6]}
    assert moved == 1


def test_near_duplicate_pictures_of_a_folder_stay_on_one_side_of_the_split():
    """A folder of pictures where 40 have a near copy (the same picture a little darker: one dHash):
    the stratified split alone puts some pairs across train and test, which would leak. None stays split."""
    labels = imbalanced_labels()
    dataset = make_dataset(labels)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 16, size=dataset.arrays["images"].shape).astype(np.float32)
    originals = rng.choice(len(labels), 40, replace=False)
    copies = rng.choice(np.setdiff1d(np.arange(len(labels)), originals), 40, replace=False)
    images[copies] = images[originals] * 0.97  # a little darker: every left-right comparison holds
    labels[copies] = labels[originals]
    folder = dataclasses.replace(dataset.meta, image_policy=ImagePolicy(size=8, channels=1, fit="pad"))
    arrays = {"images": images, "labels": labels}
    _, bundled = preprocess(Dataset(table=dataset.table, arrays=arrays, meta=dataset.meta), PARAMS, "multiclass")
    assert bundled.grouped_rows == 0  # bundled arrays (no image policy): the split as it was
    dataset = Dataset(table=dataset.table, arrays=arrays, meta=folder)
    before = split_indices(labels, PARAMS)
    side = {int(r): name for name, rows in before.items() for r in rows}
    assert any(side[int(a)] != side[int(b)] for a, b in zip(originals, copies))  # the leak this prevents
    splits, meta = preprocess(dataset, PARAMS, "multiclass")
    after = {int(r): name for name, split in splits.items() for r in split["row_id"]}
    assert sorted(after) == list(range(len(labels)))  # every row in one split
    assert all(after[int(a)] == after[int(b)] for a, b in zip(originals, copies))
    assert meta.grouped_rows == sum(side[r] != after[r] for r in side) > 0

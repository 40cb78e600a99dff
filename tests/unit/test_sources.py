"""tasks/data/sources.py: Quick Draw bitmap files and the bundled digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from tasks.core.errors import DistilleryError
from tasks.core.params import DigitsParams, QuickDrawParams
from tasks.data.sources import load_digits, load_quickdraw


def write_bitmaps(folder: Path, name: str, n: int, seed: int) -> np.ndarray:
    """n distinct random 28x28 uint8 drawings as one <name>.npy (N x 784)."""
    bitmaps = np.random.default_rng(seed).integers(0, 256, size=(n, 784), dtype=np.uint8)
    np.save(folder / f"{name}.npy", bitmaps)
    return bitmaps


@pytest.fixture
def quickdraw_folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    files = {"apple": write_bitmaps(tmp_path, "apple", 30, 1), "banana": write_bitmaps(tmp_path, "banana", 12, 2)}
    return tmp_path, files


def rows_of(images: np.ndarray) -> set[bytes]:
    return {np.asarray(row, dtype=np.uint8).tobytes() for row in images.reshape(len(images), -1)}


# --------------------------------------------------------------------------- quickdraw


def test_load_quickdraw_takes_samples_per_class_with_the_right_labels(quickdraw_folder):
    folder, files = quickdraw_folder
    params = QuickDrawParams(classes=("apple", "banana"), samples_per_class={"apple": 5, "banana": 12})
    data = load_quickdraw(folder, params, seed=0)

    assert data.images.shape == (17, 28, 28)
    assert data.images.dtype == np.float32
    assert data.labels.dtype == np.int64
    assert data.classes == ("apple", "banana")
    assert data.pixel_max == 255.0
    np.testing.assert_array_equal(data.labels, [0] * 5 + [1] * 12)
    # Each image is a real, unaltered drawing of its own class, none taken twice.
    apple, banana = data.images[data.labels == 0], data.images[data.labels == 1]
    assert rows_of(apple) <= rows_of(files["apple"]) and len(rows_of(apple)) == 5
    assert rows_of(banana) == rows_of(files["banana"])  # all 12 asked for, all 12 held


def test_load_quickdraw_label_order_follows_params_classes(quickdraw_folder):
    folder, files = quickdraw_folder
    params = QuickDrawParams(classes=("banana", "apple"), samples_per_class={"apple": 3, "banana": 4})
    data = load_quickdraw(folder, params, seed=0)
    assert data.classes == ("banana", "apple")
    assert rows_of(data.images[data.labels == 0]) <= rows_of(files["banana"])
    assert rows_of(data.images[data.labels == 1]) <= rows_of(files["apple"])


def test_load_quickdraw_is_deterministic_for_a_seed(quickdraw_folder):
    folder, _ = quickdraw_folder
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 5})
    first, again = load_quickdraw(folder, params, seed=3), load_quickdraw(folder, params, seed=3)
    np.testing.assert_array_equal(first.images, again.images)
    other = load_quickdraw(folder, params, seed=4)
    assert not np.array_equal(first.images, other.images)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 100), dtype=np.uint8),
        np.zeros((10, 28, 28), dtype=np.uint8),
        np.zeros(784, dtype=np.uint8),
    ],
    ids=["Nx100", "3-D", "1-D"],
)
def test_load_quickdraw_rejects_a_wrong_shape_naming_the_file(tmp_path, bad):
    np.save(tmp_path / "apple.npy", bad)
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 1})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(tmp_path, params, seed=0)
    assert str(tmp_path / "apple.npy") in str(err.value)
    assert str(bad.shape) in str(err.value)


def test_load_quickdraw_rejects_a_wrong_dtype_naming_the_file(tmp_path):
    np.save(tmp_path / "apple.npy", np.zeros((4, 784), dtype=np.float32))
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 1})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(tmp_path, params, seed=0)
    assert str(tmp_path / "apple.npy") in str(err.value) and "uint8" in str(err.value)


@pytest.mark.parametrize("cut", ["truncated", "header-only", "garbage", "empty"])
def test_load_quickdraw_rejects_an_unreadable_file_naming_it(tmp_path, cut):
    path = tmp_path / "apple.npy"
    write_bitmaps(tmp_path, "apple", 20, 0)
    raw = path.read_bytes()
    path.write_bytes(
        {"truncated": raw[:1000], "header-only": raw[:50], "garbage": b"not numpy" * 20, "empty": b""}[cut]
    )
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 5})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(tmp_path, params, seed=0)
    assert str(path) in str(err.value)


def test_load_quickdraw_rejects_an_npz_archive_named_npy(tmp_path):
    path = tmp_path / "apple.npy"
    with open(path, "wb") as handle:
        np.savez(handle, bitmaps=np.zeros((4, 784), dtype=np.uint8))
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 1})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(tmp_path, params, seed=0)
    assert str(path) in str(err.value)


def test_load_quickdraw_names_a_missing_folder(tmp_path):
    folder = tmp_path / "no-such-folder"
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 1})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(folder, params, seed=0)
    assert str(folder) in str(err.value) and "data.path" in str(err.value)


def test_load_quickdraw_without_a_folder_names_data_path():
    params = QuickDrawParams(classes=("apple",), samples_per_class={"apple": 1})
    with pytest.raises(DistilleryError, match="data.path"):
        load_quickdraw(None, params, seed=0)


def test_load_quickdraw_names_a_missing_class_file(quickdraw_folder):
    folder, _ = quickdraw_folder
    params = QuickDrawParams(classes=("apple", "cat"), samples_per_class={"apple": 1, "cat": 1})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(folder, params, seed=0)
    assert str(folder / "cat.npy") in str(err.value)
    assert "data.quickdraw.classes" in str(err.value)


def test_load_quickdraw_names_the_key_when_asking_for_more_than_the_file_holds(quickdraw_folder):
    folder, _ = quickdraw_folder
    params = QuickDrawParams(classes=("apple", "banana"), samples_per_class={"apple": 5, "banana": 13})
    with pytest.raises(DistilleryError) as err:
        load_quickdraw(folder, params, seed=0)
    message = str(err.value)
    assert "data.quickdraw.samples_per_class.banana" in message
    assert str(folder / "banana.npy") in message
    assert "13" in message and "12" in message


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_counts() -> np.ndarray:
    return np.bincount(sk_load_digits().target, minlength=10)


def test_load_digits_honours_keep_fractions(digits_counts):
    fractions = (1.0, 0.9, 0.75, 0.1, 0.6, 1.0, 0.5, 0.85, 0.7, 0.95)
    data = load_digits(DigitsParams(keep_fractions=fractions), seed=42)
    kept = np.bincount(data.labels, minlength=10)
    for digit, fraction in enumerate(fractions):
        assert abs(kept[digit] - fraction * digits_counts[digit]) <= 1, digit
    assert kept[3] < 0.2 * kept.max()  # the rare class really is rare
    assert data.images.shape == (len(data.labels), 8, 8)
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    assert data.classes == tuple(str(d) for d in range(10))
    assert data.pixel_max == 16.0
    assert 0 <= data.images.min() and data.images.max() <= 16


def test_load_digits_keeps_real_images_with_their_own_labels():
    bunch = sk_load_digits()
    originals = {(img.astype(np.float32).tobytes(), int(t)) for img, t in zip(bunch.images, bunch.target)}
    data = load_digits(DigitsParams(keep_fractions=(0.3,) * 10), seed=1)
    pairs = [(img.tobytes(), int(t)) for img, t in zip(data.images, data.labels)]
    assert set(pairs) <= originals


def test_load_digits_with_all_fractions_one_keeps_everything(digits_counts):
    data = load_digits(DigitsParams(keep_fractions=(1.0,) * 10), seed=0)
    np.testing.assert_array_equal(np.bincount(data.labels, minlength=10), digits_counts)


def test_load_digits_is_deterministic_for_a_seed():
    params = DigitsParams(keep_fractions=(0.5,) * 10)
    first, again, other = load_digits(params, 7), load_digits(params, 7), load_digits(params, 8)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.images, other.images)

"""Data sources: each returns images (N, H, W) float32 in raw pixel units, labels
(N,) int64 and the class names. Nothing is downloaded at run time. A folder of
pictures (uint8, any channels) is tasks/data/images.py's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tasks.contracts.dataset import LABEL, ROW_ID
from tasks.core.errors import DistilleryError
from tasks.core.params import Digits28Params, DigitsParams, QuickDrawParams

QUICKDRAW_SIDE = 28


@dataclass(frozen=True)
class ImageData:
    images: np.ndarray  # (N, H, W) or (N, H, W, C), raw pixel units (float32; uint8 for a folder of pictures)
    labels: np.ndarray  # (N,) int64 index into classes
    classes: tuple[str, ...]
    pixel_max: float  # the top of the source's pixel range (16 for digits, 255 for bitmaps)
    details: Optional[pd.DataFrame] = None  # per-image columns a source of files knows (tasks.data.images)


# Attributes of each digit 0..9, for the multilabel task: even, at least 5, has a closed loop.
DIGIT_ATTRIBUTES = ("even", "large", "loop")
DIGIT_ATTRIBUTE_MATRIX = tuple((int(d % 2 == 0), int(d >= 5), int(d in (0, 6, 8, 9))) for d in range(10))


def load_digits(params: DigitsParams, seed: int) -> ImageData:
    """scikit-learn's bundled 8x8 digits, made imbalanced by per-class keep fractions."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for digit, fraction in enumerate(params.keep_fractions):
        idx = np.flatnonzero(bunch.target == digit)
        n_keep = max(1, round(fraction * len(idx)))
        keep.append(np.sort(rng.choice(idx, size=n_keep, replace=False)))
    kept = np.sort(np.concatenate(keep))
    return ImageData(
        images=bunch.images[kept].astype(np.float32),
        labels=bunch.target[kept].astype(np.int64),
        classes=tuple(str(d) for d in range(10)),
        pixel_max=16.0,
    )


DIGITS28_SIDE = 28


def load_digits28(digits: DigitsParams, params: Digits28Params, seed: int) -> ImageData:
    """A 28x28 grayscale workload from real data (the size of MNIST and Quick Draw):
    scikit-learn's 8x8 digits, kept by `digits.keep_fractions` (digit 3 rare),
    upsampled x3 bilinearly to 24x24, padded to 28x28, and turned into
    `params.copies` copies each under its own random affine jitter (rotation,
    zoom, shift about the centre), pixels scaled 0..16 -> 0..255. Seeded: the
    same params give the same images."""
    from scipy import ndimage

    base = load_digits(digits, seed)
    pad = (DIGITS28_SIDE - 3 * base.images.shape[1]) // 2
    up = np.pad(ndimage.zoom(base.images, (1, 3, 3), order=1), ((0, 0), (pad, pad), (pad, pad)))
    rng = np.random.default_rng(seed + 1)
    centre = np.full(2, (DIGITS28_SIDE - 1) / 2)
    images = np.empty((params.copies * len(up), DIGITS28_SIDE, DIGITS28_SIDE), np.float32)
    for i, image in enumerate(np.tile(up, (params.copies, 1, 1))):
        angle = np.deg2rad(rng.uniform(-params.rotate_deg, params.rotate_deg))
        zoom = rng.uniform(1 - params.scale, 1 + params.scale)
        shift = rng.uniform(-params.shift_px, params.shift_px, 2)
        # affine_transform maps output coordinates to input ones: the inverse of the jitter.
        matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / zoom
        images[i] = ndimage.affine_transform(image, matrix, offset=centre - matrix @ centre - shift, order=1)
    images = np.round(np.clip(images * (255.0 / 16.0), 0, 255))
    return ImageData(
        images=images.astype(np.float32),
        labels=np.tile(base.labels, params.copies),
        classes=base.classes,
        pixel_max=255.0,
    )


def load_quickdraw(folder: str | Path | None, params: QuickDrawParams, seed: int) -> ImageData:
    """Quick Draw `numpy_bitmap` files: one `<class>.npy` per class, N x 784 uint8."""
    if folder is None:
        raise DistilleryError("params.yaml: 'data.path' must name the folder of <class>.npy files for quickdraw")
    folder = Path(folder)
    if not folder.is_dir():
        raise DistilleryError(f"{folder}: data folder not found (params.yaml 'data.path')")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(params.classes):
        path = folder / f"{name}.npy"
        if not path.exists():
            raise DistilleryError(f"{path}: file for class '{name}' not found (params.yaml 'data.quickdraw.classes')")
        try:
            # mmap: the real files hold ~100k drawings; read only what is sampled.
            bitmaps = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # EOFError: an empty file
            raise DistilleryError(f"{path}: not a readable .npy file ({err})") from err
        if not isinstance(bitmaps, np.ndarray):  # np.load returns an archive for .npz content
            raise DistilleryError(f"{path}: expected one .npy array, got an .npz archive")
        if bitmaps.ndim != 2 or bitmaps.shape[1] != QUICKDRAW_SIDE * QUICKDRAW_SIDE:
            raise DistilleryError(
                f"{path}: expected shape (N, {QUICKDRAW_SIDE * QUICKDRAW_SIDE}) of 28x28 bitmaps, got {bitmaps.shape}"
            )
        if bitmaps.dtype != np.uint8:
            raise DistilleryError(f"{path}: expected dtype uint8, got {bitmaps.dtype}")
        wanted = params.samples_per_class[name]
        if wanted > len(bitmaps):
            raise DistilleryError(
                f"{path}: asked for {wanted} samples (data.quickdraw.samples_per_class.{name}) but it holds {len(bitmaps)}"
            )
        idx = np.sort(rng.choice(len(bitmaps), size=wanted, replace=False))
        images.append(np.asarray(bitmaps[idx], dtype=np.float32).reshape(-1, QUICKDRAW_SIDE, QUICKDRAW_SIDE))
        labels.append(np.full(wanted, label, dtype=np.int64))
    return ImageData(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        classes=tuple(params.classes),
        pixel_max=255.0,
    )


# --------------------------------------------------------------------------- tables

PENGUINS_TARGET = "Species"
# What each column of penguins-raw is, so the gate and the model treat it right.
PENGUINS_COLUMNS = {
    "studyName": "id",
    "Sample Number": "id",
    "Region": "ignore",  # one value only
    "Island": "categorical",
    "Stage": "ignore",  # one value only
    "Individual ID": "id",
    "Clutch Completion": "categorical",
    "Date Egg": "ignore",
    "Culmen Length (mm)": "numeric",
    "Culmen Depth (mm)": "numeric",
    "Flipper Length (mm)": "numeric",
    "Body Mass (g)": "numeric",
    "Sex": "categorical",
    "Delta 15 N (o/oo)": "numeric",
    "Delta 13 C (o/oo)": "numeric",
    "Comments": "text",
}


@dataclass(frozen=True)
class TableData:
    table: pd.DataFrame  # the values as read: text stays text, for the gate to judge
    target: str
    columns: dict[str, str]  # declared column types (the rest are inferred)
    origin: str  # where it came from, for messages


def read_csv_text(path: Path, encoding: str) -> pd.DataFrame:
    """Every cell as text, nothing parsed or dropped: "NA", "." and "65000 $" reach
    the gate as written, so it can report and correct them."""
    if not path.is_file():
        raise DistilleryError(f"{path}: CSV file not found (params.yaml 'data.path')")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
    except pd.errors.EmptyDataError as err:
        raise DistilleryError(f"{path}: the file is empty; a header row and data rows are needed") from err
    except UnicodeDecodeError as err:
        raise DistilleryError(
            f"{path}: not valid {encoding} text (byte {err.start}: {err.reason}); "
            "convert the file to UTF-8 or set params.yaml 'data.encoding' (e.g. latin-1)"
        ) from err
    except pd.errors.ParserError as err:
        raise DistilleryError(f"{path}: not a readable CSV ({err})") from err


def sklearn_table(source: str) -> tuple[pd.DataFrame, str]:
    """scikit-learn's bundled tables, as text like a CSV reader gives them:
    breast_cancer (binary: malignant / benign) and diabetes (regression:
    disease progression after one year, in its original units)."""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    if source == "breast_cancer":
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.data.copy()
        frame["diagnosis"] = np.asarray(bunch.target_names)[bunch.target]
        return frame.astype(str), "diagnosis"
    bunch = load_diabetes(as_frame=True, scaled=False)
    frame = bunch.data.copy()
    frame["progression"] = bunch.target
    return frame.astype(str), "progression"


def load_table(source: str, path: str | None, target: str | None, columns: dict[str, str], encoding: str) -> TableData:
    """penguins-raw (bundled with palmerpenguins), breast_cancer and diabetes
    (bundled with scikit-learn), or the user's CSV / Parquet file."""
    if source in ("breast_cancer", "diabetes"):
        table, default_target = sklearn_table(source)
        declared = {c: "numeric" for c in table.columns if c != default_target}
        if source == "diabetes":
            declared["sex"] = "categorical"  # coded 1/2 in the raw data
        target = target or default_target
        return TableData(table=table, target=target, columns={**declared, **columns}, origin=f"sklearn:{source}")
    if source == "penguins":
        from importlib.resources import files

        file = Path(str(files("palmerpenguins") / "data" / "penguins-raw.csv"))
        table, declared, default_target = read_csv_text(file, "utf-8"), PENGUINS_COLUMNS, PENGUINS_TARGET
    else:
        if not path:
            raise DistilleryError(f"params.yaml: 'data.path' must name the {source} file")
        file = Path(path)
        if source == "csv":
            table = read_csv_text(file, encoding)
        else:
            if not file.is_file():
                raise DistilleryError(f"{file}: Parquet file not found (params.yaml 'data.path')")
            try:
                table = pd.read_parquet(file)
            except Exception as err:  # pyarrow raises several types for a bad file
                raise DistilleryError(f"{file}: not a readable Parquet file ({err})") from err
        declared, default_target = {}, None
    target = target or default_target
    if target not in table.columns:
        raise DistilleryError(
            f"{file}: target column '{target}' not found (params.yaml 'data.target'); columns: {list(table.columns)}"
        )
    if ROW_ID in table.columns or LABEL in table.columns:
        raise DistilleryError(f"{file}: columns '{ROW_ID}' and '{LABEL}' are reserved; rename them in the file")
    return TableData(table=table, target=target, columns={**declared, **columns}, origin=str(file))

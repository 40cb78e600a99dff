"""Data sources: each returns images (N, H, W) float32 in raw pixel units, labels
(N,) int64 and the class names. Nothing is downloaded at run time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import DigitsParams, QuickDrawParams
from tasks.core import DistilleryError

QUICKDRAW_SIDE = 28


@dataclass(frozen=True)
class ImageData:
    images: np.ndarray  # (N, H, W) float32, raw pixel units
    labels: np.ndarray  # (N,) int64 index into classes
    classes: tuple[str, ...]
    pixel_max: float  # the top of the source's pixel range (16 for digits, 255 for bitmaps)


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
        except ValueError as err:
            raise DistilleryError(f"{path}: not a readable .npy file ({err})") from err
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

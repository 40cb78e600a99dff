"""Stage 3, preprocess: stratified train/val/test split and normalisation stats.

The splits keep raw pixel units. Normalisation is fitted on the train split
only and stored in meta.json; the model applies it inside its own graph, so the
exported ONNX takes raw pixels and serving cannot normalise differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import paths
from tasks.config import PreprocessParams, load_params
from tasks.core import DistilleryError, hash_arrays, load_npz, run_cli, save_npz, write_json, write_summary
from tasks.dataset import Dataset, read_dataset

SPLITS = ("train", "val", "test")


def split_indices(labels: np.ndarray, params: PreprocessParams) -> dict[str, np.ndarray]:
    """Stratified split: each class keeps its share in every split."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    too_small = [c for c, n in enumerate(counts) if 0 < n < 3]
    if too_small:
        raise DistilleryError(
            f"classes {too_small} have fewer than 3 validated samples; a stratified "
            "train/val/test split needs at least one of each per split"
        )
    idx = np.arange(len(labels))
    holdout = params.val_fraction + params.test_fraction
    try:
        train, rest = train_test_split(idx, test_size=holdout, stratify=labels, random_state=params.seed)
        val, test = train_test_split(
            rest,
            test_size=params.test_fraction / holdout,
            stratify=labels[rest],
            random_state=params.seed,
        )
    except ValueError as err:  # sklearn: a class too small to reach every split at these fractions
        raise DistilleryError(
            f"cannot split the per-class counts {counts.tolist()} with preprocess.val_fraction="
            f"{params.val_fraction} and preprocess.test_fraction={params.test_fraction} ({err}); "
            "collect more samples of the rare classes"
        ) from err
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def preprocess(dataset: Dataset, params: PreprocessParams) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    images = dataset.arrays["images"].astype(np.float32)
    labels = dataset.arrays["labels"].astype(np.int64)
    x = images[:, None, :, :]  # N x C x H x W with one channel
    splits = {name: {"x": x[ix], "y": labels[ix]} for name, ix in split_indices(labels, params).items()}
    train_x = splits["train"]["x"]
    meta = {
        "classes": dataset.meta["classes"],
        "input_shape": list(x.shape[1:]),
        "pixel_max": dataset.meta["pixel_max"],
        # Per-channel stats in raw units, from the train split alone.
        "mean": train_x.mean(axis=(0, 2, 3)).tolist(),
        "std": np.maximum(train_x.std(axis=(0, 2, 3)), 1e-6).tolist(),
        "data_hash": hash_arrays(images, labels),
        "counts": {
            name: np.bincount(s["y"], minlength=len(dataset.meta["classes"])).tolist()
            for name, s in splits.items()
        },
    }
    return splits, meta


def main() -> None:
    params = load_params(paths.PARAMS).preprocess
    splits, meta = preprocess(read_dataset(paths.VALIDATED), params)
    for name, arrays in splits.items():
        save_npz(paths.PROCESSED / f"{name}.npz", **arrays)
    write_json(paths.PROCESSED / paths.META, meta)
    sizes = ", ".join(f"{name} {len(s['y'])}" for name, s in splits.items())
    write_summary(
        "preprocess",
        f"Stratified split: {sizes}.\n\nNormalisation (train only): mean {meta['mean']}, std {meta['std']}.",
    )


if __name__ == "__main__":
    run_cli(main)


def load_split(name: str, folder: Path = paths.PROCESSED) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one processed split."""
    arrays = load_npz(folder / f"{name}.npz")
    return arrays["x"], arrays["y"]

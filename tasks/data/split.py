"""The train/val/test split and train-split resampling."""

from __future__ import annotations

import numpy as np

from tasks.core.errors import DistilleryError
from tasks.core.params import PreprocessParams
from tasks.core.task import task_of


def split_indices(labels: np.ndarray, params: PreprocessParams) -> dict[str, np.ndarray]:
    """Stratified split: each class keeps its share in every split. A class too
    rare to stratify (too few rows for one in the smallest split) is dealt by
    hand instead, so the gate's validate.min_class_rows decides what is too
    few, not the split: its first row to train, then one to test and one to
    validation, the rest to train."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    rare = counts[labels] < np.ceil(1 / min(params.val_fraction, params.test_fraction))
    dealt = _deal(np.flatnonzero(rare), labels, params.seed)
    idx = np.flatnonzero(~rare)
    holdout = params.val_fraction + params.test_fraction
    train, val, test = idx, idx[:0], idx[:0]
    try:
        if len(idx):
            train, rest = train_test_split(idx, test_size=holdout, stratify=labels[idx], random_state=params.seed)
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
    parts = {"train": train, "val": val, "test": test}
    return {name: np.sort(np.concatenate([part, dealt[name]])) for name, part in parts.items()}


def keep_groups_together(parts: dict[str, np.ndarray], groups: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    """Each group of rows (near-duplicate pictures: one dHash) on one side of the split: a picture in
    train with its near copy in test is leakage, a test score the model has half seen. A group split
    across sides goes whole to the side holding most of it (train on a tie). The new parts, and how
    many rows moved."""
    order = ("train", "val", "test")
    side = np.empty(len(groups), dtype=np.int64)
    for i, name in enumerate(order):
        side[parts[name]] = i
    # Per group, the side with most of its rows; np.unique sorts, so the lowest index (train) wins ties.
    keys, group_of = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(keys), len(order)), dtype=np.int64)
    np.add.at(counts, (group_of, side), 1)
    target = counts.argmax(axis=1)[group_of]
    moved = int((target != side).sum())
    return {name: np.flatnonzero(target == i) for i, name in enumerate(order)}, moved


def _deal(rows: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The rows of rare classes, each class's in a seeded order: train, test, val, then train again.
    Train first: a class the model never saw in training could not be learnt at all."""
    rng = np.random.default_rng(seed)
    order = ("train", "test", "val")
    dealt: dict[str, list[int]] = {name: [] for name in order}
    for label in np.unique(labels[rows]):
        for i, row in enumerate(rng.permutation(rows[labels[rows] == label])):
            dealt[order[i] if i < len(order) else "train"].append(int(row))
    return {name: np.asarray(found, dtype=np.int64) for name, found in dealt.items()}


def resample_train(x: np.ndarray, y: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random over/under-sampling or SMOTE, on the train split only: validation
    and test keep the real class mix so their metrics stay honest."""
    if method == "none":
        return x, y
    from imblearn.over_sampling import SMOTE, RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    flat = x.reshape(len(x), -1)
    if method == "smote":
        rarest = int(np.bincount(y)[np.bincount(y) > 0].min())
        if rarest < 2:
            raise DistilleryError("preprocess.resample=smote needs at least 2 train samples of every class")
        sampler = SMOTE(k_neighbors=min(5, rarest - 1), random_state=seed)
    elif method == "over":
        sampler = RandomOverSampler(random_state=seed)
    else:
        sampler = RandomUnderSampler(random_state=seed)
    flat_out, y_out = sampler.fit_resample(flat, y)
    return flat_out.reshape(-1, *x.shape[1:]).astype(np.float32), y_out.astype(np.int64)


def class_counts(splits: dict[str, dict[str, np.ndarray]], n_classes: int) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.bincount(s["y"], minlength=n_classes).tolist()) for name, s in splits.items()}


def label_counts(splits: dict[str, dict[str, np.ndarray]], n_classes: int, task: str) -> dict[str, tuple[int, ...]]:
    """Per split: samples per class, positives per label (multilabel), or rows (regression).
    Tuples, as ProcessedMeta.counts declares them (and as read_meta gives them back)."""
    if task_of(task).multilabel:
        return {name: tuple(s["y"].sum(axis=0).astype(int).tolist()) for name, s in splits.items()}
    if task_of(task).regression:
        return {name: (len(s["y"]),) for name, s in splits.items()}
    return class_counts(splits, n_classes)

"""Stage 3, preprocess: stratified train/val/test split, encoding and
normalisation stats, and resampling of the train split.

Everything is fitted on the train split only. Images keep raw pixel units;
tables are encoded by `encode_table` (imputation and one-hot), the one function
training and serving share. Standardisation lives inside the model's graph, so
the exported ONNX cannot be fed differently from how it was trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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


def _class_counts(splits: dict[str, dict[str, np.ndarray]], n_classes: int) -> dict[str, list[int]]:
    return {name: np.bincount(s["y"], minlength=n_classes).tolist() for name, s in splits.items()}


def preprocess(dataset: Dataset, params: PreprocessParams) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    if dataset.meta.get("kind") == "tabular":
        return preprocess_table(dataset, params)
    images = dataset.arrays["images"].astype(np.float32)
    labels = dataset.arrays["labels"].astype(np.int64)
    x = images[:, None, :, :]  # N x C x H x W with one channel
    task = dataset.meta.get("task", "multiclass")
    classes = dataset.meta["classes"]
    targets: np.ndarray = labels
    if task == "multilabel":
        # Labels derived from the digit: even, at least 5, closed loop (tasks/sources.py).
        from tasks.sources import DIGIT_ATTRIBUTE_MATRIX, DIGIT_ATTRIBUTES

        targets, classes = np.asarray(DIGIT_ATTRIBUTE_MATRIX, np.float32)[labels], list(DIGIT_ATTRIBUTES)
    row_ids = dataset.table["row_id"].to_numpy()
    splits = {name: {"x": x[ix], "y": targets[ix], "row_id": row_ids[ix]}
              for name, ix in split_indices(labels, params).items()}
    train_x = splits["train"]["x"]
    meta = {
        "kind": "image",
        "task": task,
        "classes": classes,
        "input_shape": list(x.shape[1:]),
        "pixel_max": dataset.meta["pixel_max"],
        # Per-channel stats in raw units, from the train split alone.
        "mean": train_x.mean(axis=(0, 2, 3)).tolist(),
        "std": np.maximum(train_x.std(axis=(0, 2, 3)), 1e-6).tolist(),
        "data_hash": hash_arrays(images, labels),
        "resample": params.resample,
    }
    if task != "multilabel" and params.resample != "none":
        splits["train"]["x"], splits["train"]["y"] = resample_train(
            splits["train"]["x"], splits["train"]["y"], params.resample, params.seed
        )
        del splits["train"]["row_id"]  # resampled rows are no longer the dataset's rows
    meta["counts"] = _label_counts(splits, len(meta["classes"]), task)
    return splits, meta


def _label_counts(splits: dict[str, dict[str, np.ndarray]], n_classes: int, task: str) -> dict[str, list]:
    """Per split: samples per class, positives per label (multilabel), or rows (regression)."""
    if task == "multilabel":
        return {name: s["y"].sum(axis=0).astype(int).tolist() for name, s in splits.items()}
    if task == "regression":
        return {name: [len(s["y"])] for name, s in splits.items()}
    return _class_counts(splits, n_classes)


# --------------------------------------------------------------------------- tables


def fit_encoder(train: pd.DataFrame, column_types: dict[str, str], impute: str) -> dict:
    """Everything encode_table needs, learnt from the train split: the numeric
    columns and their fill values, and each categorical column's categories."""
    numeric = [c for c, t in column_types.items() if t == "numeric"]
    categorical = [c for c, t in column_types.items() if t == "categorical"]
    fill = {}
    for col in numeric:
        values = pd.to_numeric(train[col], errors="coerce").dropna()
        if values.empty:
            fill[col] = 0.0
        elif impute == "mean":
            fill[col] = float(values.mean())
        elif impute == "most_frequent":
            fill[col] = float(values.mode().iloc[0])
        else:  # median; also the serving fallback for knn and iterative
            fill[col] = float(values.median())
    return {
        "numeric": numeric,
        "categorical": {c: sorted(train[c].dropna().astype(str).unique().tolist()) for c in categorical},
        "impute": impute,
        "fill_values": fill,
    }


def encoded_feature_names(encoder: dict) -> list[str]:
    return encoder["numeric"] + [f"{c}={v}" for c, values in encoder["categorical"].items() for v in values]


def encode_table(rows: pd.DataFrame, encoder: dict) -> np.ndarray:
    """Raw typed rows -> the float matrix the model takes: numeric gaps filled
    with the train statistic, categories one-hot (an unseen or missing category
    is all zeros). Training and serving both call this, so they cannot drift."""
    missing = [c for c in [*encoder["numeric"], *encoder["categorical"]] if c not in rows.columns]
    if missing:
        raise DistilleryError(f"input rows lack the feature columns {missing}")
    blocks = []
    if encoder["numeric"]:
        numeric = rows[encoder["numeric"]].apply(pd.to_numeric, errors="coerce")
        blocks.append(numeric.fillna(encoder["fill_values"]).to_numpy(dtype=np.float32))
    for col, categories in encoder["categorical"].items():
        values = rows[col].astype("string").fillna("\x00").to_numpy(dtype=object)
        blocks.append((values[:, None] == np.asarray(categories, dtype=object)[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0), np.float32)


def _model_imputer(method: str, params: PreprocessParams):
    """scikit-learn's KNN or iterative imputer for the numeric block (fit on train)."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401  makes IterativeImputer importable
    from sklearn.impute import IterativeImputer, KNNImputer

    if method == "knn":
        return KNNImputer(n_neighbors=params.knn_neighbors)
    return IterativeImputer(random_state=params.seed, max_iter=10)


def preprocess_table(dataset: Dataset, params: PreprocessParams) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    table, classes = dataset.table, dataset.meta["classes"]
    task = dataset.meta.get("task", "multiclass")
    if task == "regression":
        targets = pd.to_numeric(table["label"], errors="coerce").to_numpy(dtype=np.float32)
        # Stratify on quintiles, so every split sees the whole range of the target.
        strata = pd.qcut(targets, q=min(5, max(1, len(targets) // 10)), labels=False, duplicates="drop")
        parts = split_indices(np.asarray(strata, dtype=np.int64), params)
        labels = targets
    else:
        index = {name: i for i, name in enumerate(classes)}
        mapped = table["label"].astype(str).map(index)
        if mapped.isna().any():
            unknown = sorted(table.loc[mapped.isna(), "label"].astype(str).unique())
            raise DistilleryError(f"validated labels {unknown} are not among the classes {classes} (data.classes)")
        labels = mapped.to_numpy(dtype=np.int64)
        if task == "binary" and len(classes) != 2:
            raise DistilleryError(f"task.type binary needs exactly 2 classes, the data has {len(classes)}: {classes}")
        parts = split_indices(labels, params)
    types = {c: t for c, t in dataset.meta["column_types"].items() if c in dataset.meta["features"]}
    encoder = fit_encoder(table.iloc[parts["train"]], types, params.impute)
    frames = {name: table.iloc[ix].reset_index(drop=True) for name, ix in parts.items()}
    if params.impute in ("knn", "iterative") and encoder["numeric"]:
        imputer = _model_imputer(params.impute, params)
        imputer.fit(frames["train"][encoder["numeric"]].astype(float))
        for frame in frames.values():
            frame[encoder["numeric"]] = imputer.transform(frame[encoder["numeric"]].astype(float))
    splits = {name: {"x": encode_table(frames[name], encoder), "y": labels[ix], "row_id": frames[name]["row_id"].to_numpy()}
              for name, ix in parts.items()}
    train_x = splits["train"]["x"]
    meta = {
        "kind": "tabular",
        "task": task,
        "classes": classes,
        "input_shape": [train_x.shape[1]],
        "feature_names": encoded_feature_names(encoder),
        "encoder": encoder,
        "mean": train_x.mean(axis=0).tolist(),
        "std": np.maximum(train_x.std(axis=0), 1e-6).tolist(),
        "data_hash": dataset.meta["data_hash"],
        "resample": params.resample,
    }
    if task == "regression":
        # The model predicts in standardised units; the graph scales back to the target's.
        meta["target_mean"] = float(splits["train"]["y"].mean())
        meta["target_std"] = float(max(splits["train"]["y"].std(), 1e-6))
    elif params.resample != "none":
        splits["train"]["x"], splits["train"]["y"] = resample_train(train_x, splits["train"]["y"], params.resample,
                                                                    params.seed)
        del splits["train"]["row_id"]  # resampled rows are no longer the dataset's rows
    meta["counts"] = _label_counts(splits, len(classes), task)
    return splits, meta


def main() -> None:
    params = load_params(paths.PARAMS).preprocess
    splits, meta = preprocess(read_dataset(paths.VALIDATED), params)
    for name, arrays in splits.items():
        save_npz(paths.PROCESSED / f"{name}.npz", **arrays)
    write_json(paths.PROCESSED / paths.META, meta)
    sizes = ", ".join(f"{name} {len(s['y'])}" for name, s in splits.items())
    inputs = f"{meta['input_shape'][0]} encoded features" if meta["kind"] == "tabular" else f"images {meta['input_shape']}"
    write_summary(
        "preprocess",
        f"Stratified split: {sizes}; {inputs}; train resampling: {meta['resample']} "
        f"(train class counts {meta['counts']['train']}).\n\nStandardisation fitted on train only.",
    )


if __name__ == "__main__":
    run_cli(main)


def load_split(name: str, folder: Path = paths.PROCESSED) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one processed split."""
    arrays = load_npz(folder / f"{name}.npz")
    return arrays["x"], arrays["y"]

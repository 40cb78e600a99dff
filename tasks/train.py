"""Stage 4, train: the teacher CNN.

Class-weighted cross-entropy, Adam, early stopping on the validation loss with
the best weights restored. Every epoch is logged to MLflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tasks import paths
from tasks.config import FitParams, MlflowParams, TrainParams, load_params
from tasks.core import DistilleryError, read_json, run_cli, write_json, write_summary
from tasks.metrics import task_metrics
from tasks.models import Model, build_model, count_parameters, load_model, save_model, spec_for
from tasks.preprocess import load_split
from tasks.training import (
    EpochLogger,
    FitResult,
    class_weights,
    fit,
    n_outputs,
    pick_device,
    predict_logits,
    seed_everything,
    task_loss,
)


def as_tensors(*arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a) for a in arrays)


def train_teacher(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    meta: dict,
    params: TrainParams,
    on_epoch: EpochLogger | None = None,
    quiet: bool = False,
    task: str = "multiclass",
    tensorboard_dir: str | None = None,
) -> tuple[Model, FitResult]:
    seed_everything(params.seed)
    device = pick_device()
    model = build_model(spec_for(meta, params, n_outputs(task, params, len(meta["classes"])))).to(device)
    if params.init_from:
        start_from(model, params.init_from)
    weights = class_weights(train[1], len(meta["classes"]), params.class_weighting)
    loss_fn = task_loss(task, params, None if weights is None else weights.to(device))
    result = fit(model, as_tensors(*train), as_tensors(*val), loss_fn, params, on_epoch, desc="teacher",
                 quiet=quiet, frozen=params.freeze if params.init_from else (),
                 unfreeze_after=params.unfreeze_after, tensorboard_dir=tensorboard_dir)
    return model, result


def start_from(model: Model, stem: str) -> list[str]:
    """Transfer learning: copy every weight of the checkpoint `stem` whose name and
    shape match; the rest (a new head for other classes) keeps its fresh init.
    Returns the names that were not copied."""
    source = load_model(stem).state_dict()
    target = model.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not copied:
        raise DistilleryError(f"{stem}: no weight matches this model's architecture (params.yaml 'train.init_from')")
    model.load_state_dict(copied, strict=False)
    return sorted(set(target) - set(copied))


def record_training(
    stage: str,
    model_name: str,
    params: FitParams,
    mlflow_cfg: MlflowParams,
    meta: dict,
    train_fn,
) -> None:
    """Run `train_fn(on_epoch)` inside an MLflow run, then save the model, its
    validation metrics and the stage summary. Shared by train and distill."""
    import mlflow

    from tasks.tracking import mlflow_run

    val_x, val_y = load_split("val")
    with mlflow_run(mlflow_cfg, stage, {"data_hash": meta["data_hash"], "model": model_name}):
        mlflow.log_params({k: str(v) for k, v in asdict(params).items()} | {"device": str(pick_device())})
        model, result = train_fn(lambda row, epoch: mlflow.log_metrics(row, step=epoch))
        scores = task_metrics(meta.get("task", "multiclass"), predict_logits(model, val_x), val_y, meta["classes"])
        summary = {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_loss": result.best_val_loss,
            "val_quality": scores["quality"],  # macro-F1, or R^2 for regression
            "parameters": count_parameters(model),
        }
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        stem = paths.MODELS / model_name
        save_model(model.cpu(), stem)
        mlflow.log_artifact(str(stem.with_suffix(".json")))
    write_json(paths.REPORTS / f"{stage}.json", summary)
    write_summary(
        stage,
        f"`{model_name}`: {count_parameters(model):,} parameters, stopped after {result.epochs_run} epochs "
        f"(best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}).\n\n"
        f"Validation quality ({'R^2' if meta.get('task') == 'regression' else 'macro-F1'}) {scores['quality']:.4f}.",
    )


TENSORBOARD = Path("runs")  # `tensorboard --logdir runs`: live per-epoch curves


def with_search_results(params: TrainParams, best_params_file: Path) -> TrainParams:
    """params.yaml 'train' with the search stage's best values over it (none when
    the search is disabled)."""
    best = read_json(best_params_file, "search results") if best_params_file.exists() else {}
    try:
        return dataclasses.replace(params, **best)
    except (TypeError, ValueError) as err:
        raise DistilleryError(f"{best_params_file}: cannot apply to params.yaml 'train' ({err})") from err


def main() -> None:
    from tasks.search import BEST_PARAMS

    params = load_params(paths.PARAMS)
    train_params = with_search_results(params.train, BEST_PARAMS)
    meta = read_json(paths.PROCESSED / paths.META, "processed meta")
    train, val = load_split("train"), load_split("val")
    record_training(
        "train", "teacher", train_params, params.mlflow, meta,
        lambda on_epoch: train_teacher(train, val, meta, train_params, on_epoch, task=meta.get("task", "multiclass"),
                                       tensorboard_dir=str(TENSORBOARD / "train")),
    )


if __name__ == "__main__":
    run_cli(main)

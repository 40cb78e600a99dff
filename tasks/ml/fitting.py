"""Training a model from processed data, and recording it: the pieces the
train, distill, search and prune stages share."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from tasks.contracts.processed import ProcessedMeta, load_split
from tasks.core import paths
from tasks.core.errors import DistilleryError
from tasks.core.io import write_json
from tasks.core.params import AugmentParams, FitParams, MlflowParams, TrainParams
from tasks.core.report import write_summary
from tasks.core.task import task_of
from tasks.evaluation.metrics import task_metrics
from tasks.ml.models import (
    Model,
    build_model,
    count_parameters,
    load_model,
    predict_logits,
    save_model,
    spec_for,
)
from tasks.ml.training import (
    EpochLogger,
    FitResult,
    class_weights,
    fit,
    n_outputs,
    pick_device,
    seed_everything,
    task_loss,
)


def as_tensors(*arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a) for a in arrays)


def train_teacher(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    meta: ProcessedMeta,
    params: TrainParams,
    on_epoch: EpochLogger | None = None,
    quiet: bool = False,
    tensorboard_dir: str | None = None,
    augment: AugmentParams | None = None,
) -> tuple[Model, FitResult]:
    seed_everything(params.seed)
    device = pick_device()
    model = build_model(spec_for(meta, params, n_outputs(meta.task, params, meta.n_classes))).to(device)
    if params.init_from:
        start_from(model, params.init_from)
    weights = class_weights(train[1], meta.n_classes, params.class_weighting)
    loss_fn = task_loss(meta.task, params, None if weights is None else weights.to(device))
    result = fit(
        model,
        as_tensors(*train),
        as_tensors(*val),
        loss_fn,
        params,
        on_epoch,
        desc="teacher",
        quiet=quiet,
        frozen=params.freeze if params.init_from else (),
        unfreeze_after=params.unfreeze_after,
        tensorboard_dir=tensorboard_dir,
        augment=augment,
    )
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
    meta: ProcessedMeta,
    train_fn,
    teacher: dict | None = None,
) -> None:
    """Run `train_fn(on_epoch)` inside an MLflow run, then save the model, its
    validation metrics and the stage summary. Shared by train and distill;
    `teacher` (distill): which teacher it learnt from and each one's validation
    quality, so the summary gives the student's quality against them."""
    import mlflow

    from tasks.core.tracking import mlflow_run
    from tasks.ml.distributed import is_main

    if not is_main():  # under torchrun: the other ranks train alongside rank 0, which alone records
        train_fn(None)
        return
    val_x, val_y = load_split("val")
    with mlflow_run(mlflow_cfg, stage, {"data_hash": meta.data_hash, "model": model_name, "task": meta.task}):
        mlflow.log_params({k: str(v) for k, v in asdict(params).items()} | {"device": str(pick_device())})
        model, result = train_fn(lambda row, epoch: mlflow.log_metrics(row, step=epoch))
        scores = task_metrics(meta.task, predict_logits(model, val_x), val_y, list(meta.classes))
        summary = {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_loss": result.best_val_loss,
            "val_quality": scores["quality"],  # macro-F1, or R^2 for regression
            "parameters": count_parameters(model),
        }
        if teacher:
            summary.update(teacher)
            for name in ("network", "boosted"):
                if f"{name}_val_quality" in teacher:
                    summary[f"vs_{name}"] = scores["quality"] - teacher[f"{name}_val_quality"]
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        stem = paths.MODELS / model_name
        save_model(model.cpu(), stem)
        mlflow.log_artifact(str(stem.with_suffix(".json")))
    write_json(paths.REPORTS / f"{stage}.json", summary)
    stopped = (
        f"early stopping ended it at epoch {result.epochs_run} of {params.max_epochs}"
        if result.epochs_run < params.max_epochs
        else f"ran all {params.max_epochs} epochs"
    )
    write_summary(
        stage,
        f"`{model_name}`: {count_parameters(model):,} parameters; {stopped} "
        f"(best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}).\n\n"
        f"Validation quality ({task_of(meta.task).quality_label}) {scores['quality']:.4f}."
        + _against_teachers(summary),
    )


def _against_teachers(summary: dict) -> str:
    """The student's validation quality against each teacher's, in the distill summary."""
    parts = [
        f"{name} {summary[f'{name}_val_quality']:.4f} ({summary[f'vs_{name}']:+.4f})"
        for name in ("network", "boosted")
        if f"{name}_val_quality" in summary
    ]
    how = {"function_matching": " by function matching (its outputs on every augmented batch)"}.get(
        summary.get("mode", ""), ""
    )
    if not parts:
        return f" Learnt from the teacher{how}." if how else ""
    return f" Learnt from the {summary['teacher']}{how}; the teachers on the same split: " + ", ".join(parts) + "."

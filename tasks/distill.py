"""Stage 5, distill: a smaller student learns from the strongest teacher's soft
labels (tasks/ml/distillation.py).

On tables the teacher is the boosted model (models/boosted) when it beats the
network teacher on the validation split (`distill.teacher: auto`): the student
learns its probabilities (its predictions, for regression), read from its ONNX
graph. Images, and tables where the network wins, distil from the network.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.contracts.onnx import output_names
from tasks.contracts.processed import ProcessedMeta, load_split, read_meta
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.params import load_params
from tasks.core.task import task_of
from tasks.evaluation.metrics import task_metrics
from tasks.ml.checks import check_fit_params
from tasks.ml.distillation import distill_mode, distill_student
from tasks.ml.distributed import stage_main
from tasks.ml.fitting import record_training
from tasks.ml.models import load_model, predict_logits

SECTIONS = ("distill", "augment")


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS)
    # nproc_per_node > 1: this stage again, under torchrun (DDP)
    stage_main("distill", "distill", params.distill.nproc_per_node, lambda: run(params))


def boosted_outputs(x: np.ndarray, task: str) -> np.ndarray:
    """The boosted model's raw outputs (log-probabilities, or predictions) from its graph."""
    from tasks.onnx.runtime import run_batches, session

    return run_batches(session(paths.BOOSTED_ONNX, threads=1), x, output=output_names(task)[0])


def choose_teacher(
    choice: str, network: Any, train: tuple, val: tuple, meta: ProcessedMeta
) -> tuple[Any, dict[str, Any]]:
    """What the student learns from (the network, or the boosted model's outputs
    on train and val) and the figures behind the choice: each teacher's
    validation quality."""
    classes = list(meta.classes)
    figures: dict[str, Any] = {
        "network_val_quality": task_metrics(meta.task, predict_logits(network, val[0]), val[1], classes)["quality"]
    }
    has_boosted = paths.BOOSTED_ONNX.exists()
    if choice == "boosted" and not has_boosted:
        raise DistilleryError(
            f"params.yaml 'distill.teacher' is boosted but there is no boosted model ({paths.BOOSTED_INFO} says why); "
            "set it to auto or teacher"
        )
    if has_boosted:
        boosted_val = boosted_outputs(val[0], meta.task)
        figures["boosted_val_quality"] = task_metrics(meta.task, boosted_val, val[1], classes)["quality"]
    boosted_wins = has_boosted and figures["boosted_val_quality"] > figures["network_val_quality"]
    use_boosted = choice == "boosted" or (choice == "auto" and boosted_wins)
    figures["teacher"] = "boosted" if use_boosted else "teacher"
    if not use_boosted:
        return network, figures
    return (boosted_outputs(train[0], meta.task), boosted_val), figures


def run(params) -> None:
    meta = read_meta()
    check_fit_params(params.distill, "distill", meta.task)
    network = load_model(paths.MODELS / "teacher")
    train, val = load_split("train"), load_split("val")
    teacher, chosen = choose_teacher(params.distill.teacher, network, train, val, meta)
    chosen["mode"] = distill_mode(params.distill, params.augment, train[0], teacher)
    quality = task_of(meta.task).quality_label
    if "boosted_val_quality" in chosen:
        print(
            f"distill: teacher {chosen['teacher']} (validation {quality}: network {chosen['network_val_quality']:.4f}, "
            f"boosted {chosen['boosted_val_quality']:.4f}; distill.teacher: {params.distill.teacher})",
            flush=True,
        )
    record_training(
        "distill",
        "student",
        params.distill,
        params.mlflow,
        meta,
        lambda on_epoch: distill_student(
            teacher,
            train,
            val,
            meta,
            params.distill,
            on_epoch,
            tensorboard_dir=str(paths.TENSORBOARD / "distill"),
            augment=params.augment,
        ),
        chosen,
    )


if __name__ == "__main__":
    run_cli(main)

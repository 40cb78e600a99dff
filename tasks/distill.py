"""Stage 5, distill: a smaller student learns from the teacher's soft labels
(tasks/ml/distillation.py)."""

from __future__ import annotations

from tasks.contracts.processed import load_split, read_meta
from tasks.core import paths
from tasks.core.errors import run_cli
from tasks.core.params import load_params
from tasks.ml.checks import check_fit_params
from tasks.ml.distillation import distill_student
from tasks.ml.distributed import stage_main
from tasks.ml.fitting import record_training
from tasks.ml.models import load_model

SECTIONS = ("distill",)


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS)
    # nproc_per_node > 1: this stage again, under torchrun (DDP)
    stage_main("distill", "distill", params.distill.nproc_per_node, lambda: run(params))


def run(params) -> None:
    meta = read_meta()
    check_fit_params(params.distill, "distill", meta.task)
    teacher = load_model(paths.MODELS / "teacher")
    train, val = load_split("train"), load_split("val")
    record_training(
        "distill",
        "student",
        params.distill,
        params.mlflow,
        meta,
        lambda on_epoch: distill_student(
            teacher, train, val, meta, params.distill, on_epoch, tensorboard_dir=str(paths.TENSORBOARD / "distill")
        ),
    )


if __name__ == "__main__":
    run_cli(main)

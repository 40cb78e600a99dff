"""Stage 4, train: the teacher (a CNN for images, an MLP for tables).

The task's loss with class weighting, the configured optimiser and schedule,
early stopping on the validation loss with the best weights restored
(tasks/ml). Every epoch is logged to MLflow and TensorBoard. With the search
stage enabled, its best values override params.yaml 'train'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tasks.contracts.processed import load_split, read_meta
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import read_json
from tasks.core.params import TrainParams, load_params
from tasks.ml.checks import check_fit_params
from tasks.ml.distributed import stage_main
from tasks.ml.fitting import record_training, train_teacher

SECTIONS = ("train", "augment")


def with_search_results(params: TrainParams, best_params_file: Path) -> TrainParams:
    """params.yaml 'train' with the search stage's best values over it (none when
    the search is disabled)."""
    best = read_json(best_params_file, "search results") if best_params_file.exists() else {}
    try:
        return dataclasses.replace(params, **best)
    except (TypeError, ValueError) as err:
        raise DistilleryError(f"{best_params_file}: cannot apply to params.yaml 'train' ({err})") from err


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS)
    # nproc_per_node > 1: this stage again, under torchrun (DDP)
    stage_main("train", "train", params.train.nproc_per_node, lambda: run(params))


def run(params) -> None:
    meta = read_meta()
    train_params = with_search_results(params.train, paths.BEST_PARAMS)
    check_fit_params(train_params, "train", meta.task)
    train, val = load_split("train"), load_split("val")
    record_training(
        "train",
        "teacher",
        train_params,
        params.mlflow,
        meta,
        lambda on_epoch: train_teacher(
            train,
            val,
            meta,
            train_params,
            on_epoch,
            tensorboard_dir=str(paths.TENSORBOARD / "train"),
            augment=params.augment,
        ),
    )


if __name__ == "__main__":
    run_cli(main)

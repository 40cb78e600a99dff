"""Stage 6, prune: the teacher and the student with channels removed
(tasks/ml/pruning.py), fine-tuned, saved as the candidates `<model>_pruned`;
an unstructured sweep is reported."""

from __future__ import annotations

import dataclasses

from tasks.contracts.processed import load_split, read_meta
from tasks.core import paths
from tasks.core.errors import run_cli
from tasks.core.io import write_json
from tasks.core.params import load_params
from tasks.core.report import markdown_table, write_summary
from tasks.ml.checks import check_fit_params
from tasks.ml.fitting import as_tensors
from tasks.ml.models import load_model, save_model
from tasks.ml.pruning import (
    count_nonzero_parameters,
    fine_tune,
    prune_structured,
    unstructured_sweep,
)
from tasks.ml.training import class_weights, seed_everything, task_loss

# Fine-tuning uses each model's own training settings.
SECTIONS = ("prune", "train", "distill", "augment")


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS)
    prune_params = params.prune
    meta = read_meta()
    train, val = load_split("train"), load_split("val")
    report: dict[str, dict] = {}
    for name, section in (("teacher", "train"), ("student", "distill")):
        fit_params = getattr(params, section)
        check_fit_params(fit_params, section, meta.task)
        model = load_model(paths.MODELS / name)
        seed_everything(fit_params.seed)
        pruned = prune_structured(model, prune_params.structured_amount, prune_params.norm, prune_params.rank)
        if prune_params.fine_tune_epochs:
            tuning = dataclasses.replace(fit_params, patience=max(1, prune_params.fine_tune_epochs))
            # The same class weighting the model was trained with, so the rare class is not given up.
            weights = class_weights(train[1], meta.n_classes, getattr(fit_params, "class_weighting", "none"))
            fine_tune(
                pruned,
                as_tensors(*train),
                as_tensors(*val),
                task_loss(meta.task, tuning, weights),
                tuning,
                prune_params.fine_tune_epochs,
                augment=params.augment,
            )
        save_model(pruned.cpu(), paths.MODELS / f"{name}_pruned")
        print(
            f"prune: {name} -> {name}_pruned, {count_nonzero_parameters(model):,} -> "
            f"{count_nonzero_parameters(pruned):,} parameters; unstructured sweep next",
            flush=True,
        )
        report[name] = {
            "structured": {
                "amount": prune_params.structured_amount,
                "rank": prune_params.rank,
                "norm": prune_params.norm,
                "parameters_before": count_nonzero_parameters(model),
                "parameters_after": count_nonzero_parameters(pruned),
                "fine_tune_epochs": prune_params.fine_tune_epochs,
            },
            "unstructured_sweep": unstructured_sweep(
                model, prune_params.unstructured_amounts, prune_params.scope, val, meta
            ),
        }
    write_json(paths.PRUNING_REPORT, report)
    from tasks.core.tracking import log_stage

    log_stage(
        params.mlflow,
        "prune",
        {f"{name}.{key}": value for name, r in report.items() for key, value in r["structured"].items()},
        {"task": meta.task, "rank": prune_params.rank},
        (paths.PRUNING_REPORT,),
    )
    rows = [
        {"model": n, **{k: v for k, v in r["structured"].items() if k not in ("norm", "rank")}}
        for n, r in report.items()
    ]
    sweep = [{"model": n, **row} for n, r in report.items() for row in r["unstructured_sweep"]]
    write_summary(
        "prune",
        f"Structured pruning (ranked by {prune_params.rank}, {prune_params.norm} norm where no batch norm follows), "
        f"then fine-tuning; saved as `<model>_pruned` candidates:\n\n"
        + markdown_table(rows)
        + "\n\nUnstructured magnitude pruning (reported only: the ONNX stays dense, so onnxruntime gains no speed; "
        "the gain is in a compressed file):\n\n" + markdown_table(sweep),
    )


if __name__ == "__main__":
    run_cli(main)

"""Distillation against its control: the same student architecture trained
with the teacher (soft targets) and without it (hard labels only).

    python -m bench.bench_distillation

Uses the pipeline's own teacher recipe and student size from params.yaml on the
bundled digits, three seeds each; reports test macro-F1 and the student's share
of the teacher's parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bench.common import processed_digits, record
from tasks.core.params import load_params
from tasks.ml.distillation import distill_student
from tasks.evaluation.metrics import task_metrics
from tasks.ml.models import count_parameters
from tasks.ml.fitting import train_teacher
from tasks.ml.training import predict_logits

SEEDS = (0, 1, 2)


def main() -> None:
    torch.set_num_threads(2)
    params = load_params()
    splits, meta = processed_digits(params)
    train = (splits["train"]["x"], splits["train"]["y"])
    val = (splits["val"]["x"], splits["val"]["y"])
    test_x, test_y = splits["test"]["x"], splits["test"]["y"]

    def score(model) -> float:
        return task_metrics("multiclass", predict_logits(model, test_x), test_y, list(meta.classes))["macro_f1"]

    teacher, _ = train_teacher(train, val, meta, params.train, quiet=True)
    distilled, alone = [], []
    for seed in SEEDS:
        student_params = dataclasses.replace(params.distill, seed=seed)
        student, _ = distill_student(teacher, train, val, meta, student_params)
        distilled.append(score(student))
        # The control: the student's architecture and optimiser, hard labels only.
        control = dataclasses.replace(params.train, **{f.name: getattr(student_params, f.name)
                                                       for f in dataclasses.fields(student_params)
                                                       if f.name in {g.name for g in dataclasses.fields(params.train)}})
        # The distill stage's hard term has no class weights, so neither has the control.
        baseline, _ = train_teacher(train, val, meta, dataclasses.replace(control, class_weighting="none"), quiet=True)
        alone.append(score(baseline))
    results = {
        "teacher_macro_f1": score(teacher),
        "teacher_parameters": count_parameters(teacher),
        "student_parameters": count_parameters(student),
        "student_share_of_teacher": count_parameters(student) / count_parameters(teacher),
        "distilled_macro_f1": {"per_seed": distilled, "mean": float(np.mean(distilled))},
        "without_teacher_macro_f1": {"per_seed": alone, "mean": float(np.mean(alone))},
        "distillation_gain": float(np.mean(distilled) - np.mean(alone)),
    }
    record("distillation", results)
    print(results)


if __name__ == "__main__":
    main()

"""Distillation against its control: students of several widths trained with
the teacher (soft targets) and without it (hard labels only), three seeds each.

    python -m bench.bench_distillation [--source digits28] [--widths 4,8:16 8,16:32 16,32:64]

Uses the pipeline's own teacher recipe and student recipe from params.yaml on
a bundled image source (default digits28, the 28x28 workload; `--source
digits` for 8x8). A width is `channels:hidden`. For each width and seed the
same student architecture, optimiser, schedule and epochs are trained twice:
distilled (distill stage: KL on the teacher's softened logits + hard loss) and
alone (hard labels only, the control). Reports test macro-F1 per seed, the
paired gain (distilled - alone) with its mean, standard deviation and range,
and each student's parameters against the teacher's. Results go to
reports/bench.json under "distillation".
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from bench.common import processed_digits, record, timed
from tasks.core.params import load_params
from tasks.evaluation.metrics import task_metrics
from tasks.ml.distillation import distill_student
from tasks.ml.fitting import train_teacher
from tasks.ml.models import count_parameters
from tasks.ml.training import predict_logits

SEEDS = (0, 1, 2)


def width(text: str) -> tuple[tuple[int, ...], int]:
    channels, hidden = text.split(":")
    return tuple(int(c) for c in channels.split(",")), int(hidden)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="digits28", choices=("digits", "digits28"))
    parser.add_argument(
        "--widths",
        nargs="+",
        type=width,
        default=[width("4,8:16"), width("8,16:32"), width("16,32:64")],
        help="student widths as channels:hidden, e.g. 8,16:32",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = load_params()
    params = dataclasses.replace(params, data=dataclasses.replace(params.data, source=args.source))
    splits, meta = processed_digits(params)
    train = (splits["train"]["x"], splits["train"]["y"])
    val = (splits["val"]["x"], splits["val"]["y"])
    test_x, test_y = splits["test"]["x"], splits["test"]["y"]

    def score(model) -> float:
        return task_metrics("multiclass", predict_logits(model, test_x), test_y, list(meta.classes))["macro_f1"]

    seconds: dict[str, float] = {}
    with timed(seconds, "teacher"):
        teacher, _ = train_teacher(train, val, meta, params.train, quiet=True)
    teacher_parameters = count_parameters(teacher)
    students = {}
    for channels, hidden in args.widths:
        name = f"{','.join(map(str, channels))}:{hidden}"
        distilled, alone = [], []
        with timed(seconds, name):
            for seed in SEEDS:
                student_params = dataclasses.replace(params.distill, seed=seed, channels=channels, hidden=hidden)
                student, _ = distill_student(teacher, train, val, meta, student_params)
                distilled.append(score(student))
                # The control: the student's architecture and optimiser, hard labels only.
                shared = {f.name for f in dataclasses.fields(params.train)}
                control = dataclasses.replace(
                    params.train,
                    **{
                        f.name: getattr(student_params, f.name)
                        for f in dataclasses.fields(student_params)
                        if f.name in shared
                    },
                )
                # The distill stage's hard term has no class weights, so neither has the control.
                baseline, _ = train_teacher(
                    train, val, meta, dataclasses.replace(control, class_weighting="none"), quiet=True
                )
                alone.append(score(baseline))
        gains = [d - a for d, a in zip(distilled, alone)]
        students[name] = {
            "channels": list(channels),
            "hidden": hidden,
            "parameters": count_parameters(student),
            "share_of_teacher": round(count_parameters(student) / teacher_parameters, 4),
            "distilled_macro_f1": {"per_seed": distilled, **spread(distilled)},
            "without_teacher_macro_f1": {"per_seed": alone, **spread(alone)},
            "gain_points": {"per_seed": [100 * g for g in gains], **{k: 100 * v for k, v in spread(gains).items()}},
        }
        print(
            f"{name}: {students[name]['parameters']:,} parameters; distilled {np.mean(distilled):.4f} "
            f"vs alone {np.mean(alone):.4f}; gain {100 * np.mean(gains):+.2f} +- {100 * np.std(gains, ddof=1):.2f} "
            f"points (seeds {SEEDS})",
            flush=True,
        )
    results = {
        "source": args.source,
        "seeds": list(SEEDS),
        "teacher_macro_f1": score(teacher),
        "teacher_parameters": teacher_parameters,
        "students": students,
        "seconds": seconds,
    }
    record("distillation", results)


if __name__ == "__main__":
    main()

"""Knowledge distillation (Hinton et al. 2015): a smaller student learns from
the teacher's softened outputs.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard loss.
The T^2 factor keeps the soft term's gradients on the same scale as the hard
term's when T changes.

Two ways to get the teacher's outputs. Function matching (Beyer et al. 2022,
"A good teacher is patient and consistent"): the frozen teacher runs on every
augmented (and mixed) batch the student sees, so the student matches the
teacher's function on many more inputs than the train split holds; outputs
cached once let the student overfit them. Precomputed: once, on the
unaugmented train split (the only way for the boosted model's outputs, read
from its graph beforehand).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.contracts.processed import ProcessedMeta
from tasks.core.params import AugmentParams, DistillParams
from tasks.core.task import task_of
from tasks.evaluation.metrics import class_logits
from tasks.ml.augment import augments
from tasks.ml.fitting import as_tensors
from tasks.ml.models import Model, build_model, predict_logits, spec_for
from tasks.ml.training import (
    EpochLogger,
    FitResult,
    fit,
    n_outputs,
    pick_device,
    seed_everything,
    task_loss,
)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, y)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


Outputs = tuple[np.ndarray, np.ndarray]  # a teacher's raw outputs on the train and validation rows


def distill_student(
    teacher: torch.nn.Module | Outputs,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    meta: ProcessedMeta,
    params: DistillParams,
    on_epoch: EpochLogger | None = None,
    tensorboard_dir: str | None = None,
    augment: AugmentParams | None = None,
) -> tuple[Model, FitResult]:
    """The student, trained on `teacher`'s outputs: a network, or outputs
    computed beforehand (the boosted model's log-probabilities, or its
    predictions for regression, on the train and validation rows). Each train
    batch is augmented as `augment` says; `distill_mode` says whether the
    teacher then runs on it."""
    seed_everything(params.seed)
    task = meta.task
    device = pick_device()
    # As class logits, a binary sigmoid teacher distils like any softmax one.
    single_label = task_of(task).single_label
    as_class = class_logits if single_label else np.asarray
    online = None
    if isinstance(teacher, tuple):
        teacher_train, teacher_val = (as_class(np.asarray(o, np.float32)) for o in teacher)
    else:
        teacher = teacher.to(device).eval().requires_grad_(False)
        teacher_val = as_class(predict_logits(teacher, val[0]))  # validation is never augmented: once
        if distill_mode(params, augment, train[0], teacher) == "function_matching":
            network = teacher
            online = (lambda x: class_logits_tensor(network(x))) if single_label else network
        else:
            teacher_train = as_class(predict_logits(teacher, train[0]))
    student = build_model(spec_for(meta, params, n_outputs(task, params, meta.n_classes))).to(device)
    hard_loss = task_loss(task, params, None)

    def loss_fn(outputs: torch.Tensor, teacher_outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if single_label:
            soft = distillation_loss(class_logits_tensor(outputs), teacher_outputs, y, params.temperature, alpha=1.0)
        elif task_of(task).multilabel:
            # Each label is its own two-class problem: BCE against the teacher's softened sigmoid.
            t = params.temperature
            soft = t**2 * F.binary_cross_entropy_with_logits(outputs / t, torch.sigmoid(teacher_outputs / t))
        else:  # regression: regress on the teacher's predictions
            soft = F.mse_loss(outputs, teacher_outputs)
        return params.alpha * soft + (1 - params.alpha) * hard_loss(outputs, y)

    result = fit(
        student,
        as_tensors(*train) if online else as_tensors(train[0], teacher_train, train[1]),
        as_tensors(val[0], teacher_val, val[1]),
        loss_fn,
        params,
        on_epoch,
        desc="student",
        tensorboard_dir=tensorboard_dir,
        augment=augment,
        online=online,
    )
    return student, result


def distill_mode(params: DistillParams, augment: AugmentParams | None, x: np.ndarray, teacher: object) -> str:
    """function_matching or precomputed, `auto` resolved: function matching
    where batches are augmented (pictures), since unaugmented batches repeat
    the same teacher outputs every epoch. Outputs computed beforehand (the
    boosted model) can only be precomputed."""
    if isinstance(teacher, tuple):
        return "precomputed"
    if params.mode == "auto":
        return "function_matching" if augments(augment, x) else "precomputed"
    return params.mode


def class_logits_tensor(logits: torch.Tensor) -> torch.Tensor:
    """torch twin of training.class_logits: [0, z] for a single binary logit."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits

"""The task type and the input kind, decided once.

Every stage that behaves differently for regression, binary, multiclass or
multilabel models, or for tables and images, asks the object here instead of
comparing strings: `task_of(meta.task).regression`, `task_of(t).quality_label`,
`kind_of(meta.kind).table`. A new task type or input kind is one more entry
here, and the places that must learn about it are those that read the
attribute it changes. tests/unit/test_task.py fails when a task or kind name
is compared anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskType = Literal["regression", "binary", "multiclass", "multilabel"]
KindName = Literal["tabular", "image"]


@dataclass(frozen=True)
class Task:
    """What a task type means for each stage. The flags say what a model of
    this task outputs; the rest are its defaults and its vocabulary."""

    name: TaskType
    regression: bool  # one value per row, no classes: MSE by default, R^2 and RMSE, the `prediction` output
    multilabel: bool  # several independent yes/no labels per row: sigmoid per label, thresholded
    binary: bool  # exactly two classes; one sigmoid logit with the single-logit losses
    default_loss: str  # tasks.ml.losses name used when train.loss is `auto` (the course's default per task)
    quality_metric: str  # the one number selection and the gate compare: evaluate's key
    quality_label: str  # how that number is named to people
    gate_floor: str  # the select.* key of the absolute floor on quality_metric
    headline: tuple[str, ...]  # the metrics `dvc metrics show` prints for the champion
    answer: Literal["value", "class", "labels"]  # what the server answers per row

    @property
    def classes(self) -> bool:
        """The model has named outputs (classes or labels) and probabilities."""
        return not self.regression

    @property
    def sigmoid(self) -> bool:
        """A yes/no probability per output can be the head (multilabel, or binary with one logit)."""
        return self.binary or self.multilabel

    @property
    def multiclass(self) -> bool:
        """More than two classes, one per row."""
        return self.single_label and not self.binary

    @property
    def single_label(self) -> bool:
        """One class per row: probabilities are a distribution (softmax), labels stratify the split."""
        return not self.regression and not self.multilabel


def _classifier(
    name: TaskType,
    default_loss: str,
    answer: Literal["class", "labels"],
    binary: bool = False,
    multilabel: bool = False,
) -> Task:
    """A task with classes: judged by macro-F1, whatever its head."""
    return Task(
        name,
        regression=False,
        multilabel=multilabel,
        binary=binary,
        default_loss=default_loss,
        quality_metric="macro_f1",
        quality_label="macro-F1",
        gate_floor="min_macro_f1",
        headline=("macro_f1", "accuracy", "ece"),
        answer=answer,
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "regression",
            regression=True,
            multilabel=False,
            binary=False,
            default_loss="mse",
            quality_metric="r2",
            quality_label="R^2",
            gate_floor="min_r2",
            headline=("r2", "rmse"),
            answer="value",
        ),
        _classifier("binary", binary=True, default_loss="bce", answer="class"),
        _classifier("multiclass", default_loss="ce", answer="class"),
        _classifier("multilabel", multilabel=True, default_loss="bce", answer="labels"),
    )
}
TASK_TYPES: tuple[str, ...] = tuple(TASKS)


def task_of(name: str) -> Task:
    """The Task for a task type's name (params' task.type, a meta's task)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task type {name!r} (one of {list(TASKS)})") from None


@dataclass(frozen=True)
class InputKind:
    """What one sample is: a row of a table, or an image."""

    name: KindName
    table: bool  # raw columns, encoded by the table encoder (in the graph's metadata) before the model
    label: str  # how a sample is named to people

    @property
    def image(self) -> bool:
        return not self.table


KINDS: dict[str, InputKind] = {
    k.name: k
    for k in (
        InputKind("tabular", table=True, label="table"),
        InputKind("image", table=False, label="image"),
    )
}
TABLE, IMAGE = KINDS["tabular"], KINDS["image"]


def kind_of(name: str) -> InputKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown input kind {name!r} (one of {list(KINDS)})") from None

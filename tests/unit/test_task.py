"""The task type and the input kind are decided in one place (tasks/core/task.py):
nothing else compares their names, and each Task says consistently what its
models output and how they are judged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.core.task import KINDS, TASK_TYPES, TASKS, kind_of, task_of

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "flows", "deploy", "bench", "stack", "expectations")
HOME = REPO / "tasks" / "core" / "task.py"
NAMES = set(TASK_TYPES) | set(KINDS)


def _compared_names(path: Path, root: Path = REPO) -> list[str]:
    """`x == "regression"`, `x != "image"`, `x in ("binary", "multiclass")`: every
    comparison of a value with a task or kind name, as `file:line`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            if any(isinstance(v, ast.Constant) and v.value in NAMES for v in values):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
                break
    return found


def test_no_module_but_the_task_module_compares_task_or_kind_names() -> None:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py") if p != HOME]
    hits = [hit for path in files for hit in _compared_names(path)]
    assert not hits, f"ask tasks.core.task (task_of(...).regression, kind_of(...).table) instead: {hits}"


def test_the_check_sees_every_spelling(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('a = t == "regression"\nb = k != "image"\nc = t in ("binary", "multiclass")\nd = t == "x"\n')
    assert [hit.split(":")[1] for hit in _compared_names(sample, tmp_path)] == ["1", "2", "3"]


@pytest.mark.parametrize("name", TASK_TYPES)
def test_each_task_is_consistent(name: str) -> None:
    task = task_of(name)
    assert task.name == name
    assert task.regression != task.classes
    assert sum([task.regression, task.multilabel, task.single_label]) == 1
    assert task.binary <= task.single_label and task.multiclass == (task.single_label and not task.binary)
    assert task.quality_metric in task.headline
    assert task.gate_floor == f"min_{task.quality_metric}"  # the select.* key that floors it
    assert (task.answer == "value") == task.regression and (task.answer == "labels") == task.multilabel


def test_the_gate_floor_names_a_select_param() -> None:
    from tasks.core.params import SelectParams

    assert {t.gate_floor for t in TASKS.values()} <= set(SelectParams.__dataclass_fields__)


def test_unknown_names_are_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown task type 'ranking'.*regression"):
        task_of("ranking")
    with pytest.raises(ValueError, match="unknown input kind 'audio'"):
        kind_of("audio")
    assert kind_of("tabular").table and kind_of("image").image

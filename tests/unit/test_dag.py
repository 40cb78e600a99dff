"""dvc.yaml against the code: every module a stage imports is among its deps, and
every params key it can read is among its params, so `dvc repro` (and the
flow) rerun a stage whenever something it depends on changes. Also the layout's
rules: no stage imports another, deploy/ imports only tasks.core and
tasks.contracts, the contracts import only tasks.core."""

from __future__ import annotations

import ast
import importlib
import re
import typing
from functools import cache
from pathlib import Path

import pytest
import yaml

from tasks.core.config import dotted_keys
from tasks.core.params import TRACKING_SECTIONS, Params

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "deploy", "flows", "expectations", "bench")  # the repo's own top-level packages
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGES = DVC["stages"]


def module_file(module: str) -> Path | None:
    """The repo file of `module` (a package's __init__.py), or None outside the repo."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Every module an `import` anywhere in the file names (function-level too:
    it runs when the function does), with `from a import b` also as `a.b` when
    b is a submodule."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@cache
def closure(module: str) -> frozenset[Path]:
    """The repo files importing `module` runs: itself, its packages' __init__
    files, and everything they import, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += [n for n in _imported(path) if module_file(n) is not None]
    return frozenset(seen)


def stage_module(stage: str) -> str:
    match = re.fullmatch(r"bin/python -m (tasks\.\w+)", STAGES[stage]["cmd"])
    assert match, f"dvc.yaml stage '{stage}': cmd must be `bin/python -m tasks.<stage>`, got {STAGES[stage]['cmd']!r}"
    return match.group(1)


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def stage_sections(stage: str) -> tuple[str, ...]:
    return importlib.import_module(stage_module(stage)).SECTIONS


def listed_params(stage: str) -> list[str]:
    return [p for p in STAGES[stage].get("params", []) if isinstance(p, str)]


SECTION_TYPES = typing.get_type_hints(Params)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_module_a_stage_imports_is_among_its_deps(stage: str) -> None:
    deps = STAGES[stage]["deps"]
    missing = sorted(p.relative_to(REPO).as_posix() for p in closure(stage_module(stage)) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage '{stage}' imports {missing} but its deps do not cover them"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_params_key_a_stage_reads_is_among_its_params(stage: str) -> None:
    listed = listed_params(stage)
    readable = [f"{section}.{key}" for section in stage_sections(stage) for key in dotted_keys(SECTION_TYPES[section])]
    missing = [key for key in readable if not any(key == p or key.startswith(p + ".") for p in listed)]
    assert not missing, f"dvc.yaml stage '{stage}' reads {missing} (its SECTIONS) but does not list them in params"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_lists_no_params_it_cannot_read(stage: str) -> None:
    """An extra key would rerun the stage for nothing; a misspelt one would track nothing."""
    sections = stage_sections(stage)
    for key in listed_params(stage):
        section = key.split(".")[0]
        assert section in sections, f"dvc.yaml stage '{stage}' lists '{key}', outside its SECTIONS {sections}"
        assert section not in TRACKING_SECTIONS
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml stage '{stage}': params.yaml has no '{key}'"
            node = node[part]


@pytest.mark.parametrize("stage", list(STAGES))
def test_no_stage_imports_another_stage(stage: str) -> None:
    stage_files = {REPO / "tasks" / f"{name}.py" for name in STAGES}
    own = REPO / "tasks" / f"{stage}.py"
    others = sorted(p.name for p in closure(stage_module(stage)) & stage_files if p != own)
    assert not others, f"stage '{stage}' imports the stage modules {others}; move what it needs into a sub-package"


def _imports_outside(module: str, allowed: tuple[str, ...]) -> list[str]:
    files = closure(module)
    return sorted(p.relative_to(REPO).as_posix() for p in files
                  if not any(p.relative_to(REPO).as_posix().startswith(a) for a in allowed))


def test_the_server_imports_only_the_core_and_the_contracts() -> None:
    outside = _imports_outside("deploy.server", ("deploy/", "tasks/__init__.py", "tasks/core/", "tasks/contracts/"))
    assert not outside, f"deploy/ imports {outside}; the server may use tasks.core and tasks.contracts only"


@pytest.mark.parametrize("module", sorted(p.stem for p in (REPO / "tasks" / "contracts").glob("*.py")))
def test_the_contracts_import_only_the_core(module: str) -> None:
    outside = _imports_outside(f"tasks.contracts.{module}", ("tasks/__init__.py", "tasks/core/", "tasks/contracts/"))
    assert not outside, f"tasks.contracts.{module} imports {outside}"


def test_the_dockerfile_copies_what_the_server_imports() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+) /app/", dockerfile, re.M)
    for path in closure("deploy.server"):
        rel = path.relative_to(REPO).as_posix()
        assert any(rel == c or rel.startswith(c.rstrip("/") + "/") for c in copied), f"the image lacks {rel}"


def test_the_closure_sees_function_level_imports() -> None:
    """The analysis itself: export imports the quantizer and runtime, select reaches the contracts."""
    files = {p.relative_to(REPO).as_posix() for p in closure("tasks.export")}
    assert {"tasks/onnx/quantize.py", "tasks/onnx/runtime.py", "tasks/core/provenance.py", "tasks/__init__.py"} <= files
    assert "tasks/contracts/registry.py" in {p.relative_to(REPO).as_posix() for p in closure("tasks.register")}


def test_stage_commands_do_not_depend_on_path() -> None:
    launcher = REPO / "bin" / "python"
    assert launcher.is_file() and launcher.stat().st_mode & 0o111, "bin/python must be an executable script"
    for stage in STAGES:
        stage_module(stage)

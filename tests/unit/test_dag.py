"""dvc.yaml against the code: every module a stage imports is among its deps, and
every params key it can read is among its params, so `dvc repro` (and the
flow) rerun a stage whenever something it depends on changes. Also the layout's
rules: no import cycle anywhere in the project, no stage imports another,
tasks/ imports neither flows/ nor bench/, tasks.core imports nothing else of the
project, the contracts import only tasks.core, deploy/ imports only tasks.core
and tasks.contracts, and expectations/ imports nothing outside itself."""

from __future__ import annotations

import ast
import importlib
import re
import typing
from functools import cache
from pathlib import Path

import networkx as nx
import pytest
import yaml

from tasks.core.config import dotted_keys
from tasks.core.params import TRACKING_SECTIONS, Params

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "deploy", "flows", "expectations", "bench", "stack")  # the repo's own top-level packages
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
    b is a submodule. Relative imports are resolved against the file's package."""
    names: set[str] = set()
    package = path.relative_to(REPO).parent.parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` in a/b/c.py is a.b.x; `from ..d import x`, a.d.x
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            if base:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
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


def _package(module: str) -> str:
    return module.split(".")[0]


def module_name(path: Path) -> str:
    """The dotted name of a repo file: tasks/data/gate.py -> tasks.data.gate, a package's __init__.py -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def import_graph() -> nx.DiGraph:
    """Every module of PACKAGES, with an edge to each project module importing
    it runs: the ones it names (function-level imports included) and their
    packages' __init__ files. A module's own packages are left out: Python has
    run them before it, and a package that re-exports its modules is no cycle."""
    graph = nx.DiGraph()
    for path in sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")):
        module = module_name(path)
        graph.add_node(module)
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        for name in _imported(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:i]))
                if found is not None and module_name(found) not in own:
                    graph.add_edge(module, module_name(found))
    return graph


def import_cycles(graph: nx.DiGraph) -> list[str]:
    """Each cycle of `graph` as its modules and one path round it: a strongly
    connected component of more than one module, or a module importing itself."""
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1 and not any(graph.has_edge(m, m) for m in component):
            continue
        path = [u for u, _ in nx.find_cycle(graph.subgraph(component), source=min(component))]
        cycles.append(f"{sorted(component)} (e.g. {' -> '.join([*path, path[0]])})")
    return sorted(cycles)


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
    return sorted(
        p.relative_to(REPO).as_posix()
        for p in files
        if not any(p.relative_to(REPO).as_posix().startswith(a) for a in allowed)
    )


def test_no_import_cycle_among_the_project_modules() -> None:
    """A cycle means neither module can be understood, tested or loaded without
    the other: put what both need in a lower module that imports neither."""
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(cycles)


def test_the_cycle_check_finds_cycles() -> None:
    """The check itself: a cycle of three, a module importing itself, and no cycle in a chain."""
    graph = nx.DiGraph(
        [
            ("flows.a", "flows.b"),
            ("flows.b", "flows.c"),
            ("flows.c", "flows.a"),
            ("tasks.d", "tasks.d"),
            ("tasks.e", "tasks.f"),
        ]
    )
    found = import_cycles(graph)
    assert len(found) == 2
    assert found[0].startswith("['flows.a', 'flows.b', 'flows.c'] (e.g. ") and found[1].startswith("['tasks.d']")
    assert not import_cycles(nx.DiGraph([("tasks.e", "tasks.f"), ("flows.a", "tasks.e")]))


def test_the_import_graph_sees_every_package_and_function_level_imports() -> None:
    graph = import_graph()
    assert {_package(m) for m in graph} == set(PACKAGES)
    assert graph.has_edge("tasks.data.gate", "expectations.custom")  # imported inside run_suite
    assert graph.has_edge("flows.run", "flows.common")  # imported inside main


def test_tasks_never_import_flows_or_bench() -> None:
    """Stages and building blocks are below the flows that wire them and the benchmarks that measure them."""
    graph = import_graph()
    above = {m for m in graph if _package(m) in ("flows", "bench")}
    paths = []
    for module in sorted(m for m in graph if _package(m) == "tasks"):
        reach = nx.single_source_shortest_path(graph, module)
        hits = [reach[m] for m in above if m in reach]
        if hits:  # the shortest path, to a module rather than a package's __init__ at the same depth
            paths.append(min(hits, key=lambda path: (len(path), module_file(path[-1]).name == "__init__.py", path)))
    shown = [" -> ".join(path) for path in sorted(paths, key=len)]
    assert not paths, (
        "tasks/ imports flows/ or bench/:\n"
        + "\n".join(shown[:10])
        + (f"\n... and {len(shown) - 10} more" if len(shown) > 10 else "")
    )


@pytest.mark.parametrize(
    "module", sorted(m for m in import_graph() if m == "tasks.core" or m.startswith("tasks.core."))
)
def test_the_core_imports_nothing_else_of_the_project(module: str) -> None:
    outside = _imports_outside(module, ("tasks/__init__.py", "tasks/core/"))
    assert not outside, f"{module} imports {outside}; tasks.core is the bottom layer"


@pytest.mark.parametrize("module", sorted(m for m in import_graph() if _package(m) == "expectations"))
def test_the_expectations_import_nothing_outside_themselves(module: str) -> None:
    """tasks/ (the gate, the quality report) imports the expectations and the measures
    behind them (expectations/measures.py), never the other way round."""
    outside = _imports_outside(module, ("expectations/",))
    assert not outside, f"{module} imports {outside}"


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

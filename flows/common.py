"""What more than one flow module needs: DVC's view of the stages (their order,
whether one is stale, its output without DVC's git hints, the locks a killed
run left) and the Prefect server check.

It imports no other module of flows/, so pipeline, report, run and
deployments all import it and none imports another to reach these.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator

from tasks.core.tracking import check_answers


def stage_order(root: Path) -> list[str]:
    """Stage names from dvc.yaml, in dependency order."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with contextlib.chdir(root), Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to what it depends on
        ordered = reversed(list(nx.topological_sort(graph)))
        return [s.name for s in ordered if isinstance(s, PipelineStage)]


def is_stale(root: Path, stage: str) -> bool:
    from dvc.repo import Repo

    # DVC resolves outputs against the working directory, so look from inside the repo.
    with contextlib.chdir(root), Repo(str(root)) as repo:
        return bool(repo.status(targets=[stage]))


def release_dead_locks(root: Path) -> list[int]:
    """Drop from DVC's rwlock the entries of processes that are gone, zombies
    included; the PIDs dropped.

    DVC frees the entries of a PID that no longer exists by itself. But after
    a `kill -9` of a flow, its `dvc repro` child is reparented to init, and
    until init reaps it that PID is a zombie: it still "exists", and DVC would
    refuse every stage it held ("is busy ... remove .dvc/tmp/rwlock"). The
    edit takes DVC's own guard (rwlock.lock), as DVC does."""
    import psutil
    from dvc.fs import localfs
    from dvc.rwlock import RWLOCK_FILE, _edit_rwlock

    tmp = root / ".dvc" / "tmp"
    if not (tmp / RWLOCK_FILE).exists():
        return []

    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    gone: set[int] = set()
    with _edit_rwlock(str(tmp), localfs, False) as lock:
        for path, info in list(lock["write"].items()):
            if dead(info["pid"]):
                gone.add(info["pid"])
                del lock["write"][path]
        for path, infos in list(lock["read"].items()):
            alive = [info for info in infos if not dead(info["pid"])]
            gone |= {info["pid"] for info in infos} - {info["pid"] for info in alive}
            if alive:
                lock["read"][path] = alive
            else:
                del lock["read"][path]
    return sorted(gone)


def without_git_hints(lines: Iterable[str]) -> Iterator[str]:
    """A stage's output without the block `dvc repro` prints after every stage
    ("To track the changes with git, run: git add dvc.lock ... Use `dvc push`
    ..."): ten lines per stage. The flow says it once, at the end
    (flows.pipeline.GIT_HINT). Hiding starts at the block's first line and
    ends at the first line that is not part of it, so no stage output is ever
    lost."""
    hiding = False
    for line in lines:
        text = line.strip()
        if text.startswith("To track the changes with git"):
            hiding = True
        elif hiding and not (
            text == "" or line.startswith("\t") or text.startswith(("To enable auto staging", "Use `dvc push`"))
        ):
            hiding = False
        if not hiding:
            yield line


def check_prefect_server(url: str) -> None:
    check_answers(
        "Prefect server",
        "PREFECT_API_URL",
        url,
        f"{url.rstrip('/')}/health",
        "start one (`make stack` starts the project's, `.venv/bin/prefect server start` a bare one), "
        "or point PREFECT_API_URL at yours, or unset it to run on a temporary local server",
    )

"""`make run`: the pipeline flow, after one quick look at what is stale.

When `dvc status` finds every stage up to date (params, code, data and
outputs all as `dvc.lock` records them), there is nothing to run: this says
so in about two seconds and starts no Prefect server. Otherwise, and
whenever options are given, it runs the Prefect flow (flows/pipeline.py).
Deployments and workers run the flow itself, so every scheduled or triggered
run is a Prefect flow run, stale or not.
"""

from __future__ import annotations

import sys

from tasks.core.errors import run_cli


def main() -> None:
    if len(sys.argv) == 1:
        from pathlib import Path

        from dvc.lock import LockError
        from dvc.repo import Repo

        from flows.pipeline import release_dead_locks
        from tasks.core.errors import DistilleryError
        from tasks.core.params import load_params

        load_params()  # a bad key anywhere stops here, as it would stop the flow
        if dead := release_dead_locks(Path(".").resolve()):
            print(f"released DVC locks held by killed processes {dead}")
        try:
            with Repo(".") as repo:
                stale, stages = repo.status(), list(repo.index.stages)
        except LockError as err:  # a live DVC process is working on this project
            raise DistilleryError(f"another DVC command is running here: {err}") from err
        if not stale:
            from flows.report import console_summary

            print(f"pipeline done: ran nothing; skipped {len(stages)} up-to-date stage(s) "
                  "(dvc status is clean, so no Prefect flow run was started)")
            print("\n".join(console_summary(Path(".").resolve())))
            return
    from flows.pipeline import main as run_flow

    run_flow()


if __name__ == "__main__":
    run_cli(main)

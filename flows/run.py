"""`make run`: the pipeline flow, after one quick look at what is stale.

When `dvc status` finds every stage up to date (params, code, data and
outputs all as `dvc.lock` records them), there is nothing to train: only the
stages that always run (register, which checks the MLflow registry) run,
through plain `dvc repro`, in a few seconds and with no Prefect server. Otherwise, and
whenever options are given, it runs the Prefect flow (flows/pipeline.py).
Deployments and workers run the flow itself, so every scheduled or triggered
run is a Prefect flow run, stale or not.
"""

from __future__ import annotations

import sys

from tasks.core.errors import run_cli

ALWAYS_CHANGED = "always changed"  # what `dvc status` says of an `always_changed` stage


def main() -> None:
    if len(sys.argv) == 1:
        from pathlib import Path

        from dvc.lock import LockError
        from dvc.repo import Repo

        from flows.common import release_dead_locks
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
        if all(changes == [ALWAYS_CHANGED] for changes in stale.values()):
            import subprocess

            from flows.common import without_git_hints
            from flows.report import console_summary

            for stage in stale:  # dvc.yaml's order; the registry may hold nothing yet (a new server, `dvc pull`)
                process = subprocess.Popen(
                    [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                sys.stdout.writelines(without_git_hints(process.stdout))
                if process.wait():
                    raise DistilleryError(f"stage '{stage}' failed (its output is above)")
            print(
                f"pipeline done: ran {list(stale) or 'nothing'} (always run: the registry is outside DVC); "
                f"skipped {len(stages) - len(stale)} up-to-date stage(s), so no Prefect flow run was started"
            )
            print("\n".join(console_summary(Path(".").resolve())))
            return
    from flows.pipeline import main as run_flow

    run_flow()


if __name__ == "__main__":
    run_cli(main)

"""From one served prediction back to the rows that trained its model.

`python -m tasks.trace <request_id>` reads the prediction log for that
request, finds the registered version that answered, and prints its MLflow
run and metrics, the git commit of its code, dvc.lock's hashes of its data,
and the commands that check out exactly that data in a clone:

- a commit whose dvc.lock records the same data (the README's `git add
  dvc.lock && git commit` after a run): `git checkout <it> && dvc checkout`,
  or `dvc pull` when a DVC remote is set up (the shared stack's);
- otherwise the code's commit, then `--write-lock`, which writes the dvc.lock
  the select run logged as it stood, then the same DVC command.

It reads MLFLOW_TRACKING_URI (params.yaml's mlflow.tracking_uri by default),
so it works with the local files and with the shared stack alike.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from tasks.contracts import predlog
from tasks.contracts.registry import LINEAGE_LOCK, lineage_hashes
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.params import load_params

TRAINING_DATA = "data/processed"  # the splits that trained it: the hash a checkout is matched on


def _git(*args: str, cwd: Path = Path(".")) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def lock_commit(md5: str, cwd: Path = Path(".")) -> Optional[str]:
    """The newest commit whose dvc.lock records `md5` for TRAINING_DATA."""
    for commit in _git("log", "--format=%H", "--", "dvc.lock", cwd=cwd).split():
        try:
            lock = yaml.safe_load(_git("show", f"{commit}:dvc.lock", cwd=cwd)) or {}
        except yaml.YAMLError:
            continue
        for stage in lock.get("stages", {}).values():
            if any(o.get("path") == TRAINING_DATA and o.get("md5") == md5 for o in stage.get("outs", [])):
                return commit
    return None


def has_remote(cwd: Path = Path(".")) -> bool:
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return bool(repo.config.get("remote"))


def find_version(client: Any, registered: str, served: str) -> Any:
    """The registry version that answered: the server logs the version number,
    or for a file it serves, the first 12 characters of its sha256."""
    from mlflow.exceptions import MlflowException

    try:
        return (
            client.get_model_version(registered, served)
            if served.isdigit()
            else next(
                v
                for v in client.search_model_versions(f"name='{registered}'")
                if v.tags.get("sha256", "").startswith(served)
            )
        )
    except (MlflowException, StopIteration) as err:
        raise DistilleryError(
            f"model version {served!r} is not in the registry's '{registered}' "
            "(is MLFLOW_TRACKING_URI the registry the server followed?)"
        ) from err


def trace(request_id: str, log_dir: Path) -> dict[str, Any]:
    from mlflow import MlflowClient

    rows = predlog.request_rows(log_dir, request_id)
    if rows.empty:
        raise DistilleryError(
            f"request {request_id!r} is not in the prediction log at {log_dir} "
            "(DISTILLERY_SERVE_LOG_DIR; --log-dir to read another)"
        )
    params = load_params(paths.PARAMS)
    client = MlflowClient(tracking_uri=params.mlflow.resolved_uri())
    version = find_version(client, params.registered_model, str(rows[predlog.MODEL_VERSION].iloc[0]))
    run = client.get_run(version.run_id)
    hashes = lineage_hashes(version.tags)
    training = hashes.get(TRAINING_DATA)
    commit = lock_commit(training) if training else None
    fetch = "dvc pull" if has_remote() else "dvc checkout"
    if commit:
        checkout = f"git checkout {commit} && {fetch}"
    else:
        checkout = (
            f"git checkout {version.tags.get('git_commit', '<unknown>')} && "
            f"python -m tasks.trace {request_id} --write-lock && {fetch}"
        )
    return {
        "request_id": request_id,
        "rows": rows,
        "registered_model": params.registered_model,
        "version": version,
        "run": run,
        "hashes": hashes,
        "lock_commit": commit,
        "checkout": checkout,
    }


def write_lock(found: dict[str, Any], target: Path = Path("dvc.lock")) -> Path:
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=found["run"].info.run_id,
        artifact_path=LINEAGE_LOCK,
        tracking_uri=load_params(paths.PARAMS).mlflow.resolved_uri(),
    )
    target.write_bytes(Path(local).read_bytes())
    return target


def describe(found: dict[str, Any]) -> list[str]:
    rows, version, run = found["rows"], found["version"], found["run"]
    lines = [
        f"request {found['request_id']}: {len(rows)} row(s), answered by "
        f"{found['registered_model']} version {version.version} ({rows[predlog.ENDPOINT].iloc[0]}, "
        f"status {int(rows[predlog.STATUS].iloc[0])})"
    ]
    for _, row in rows.iterrows():
        answer = row[predlog.PREDICTED] if row[predlog.PREDICTED] is not None else row[predlog.VALUE]
        probability = f", probability {row[predlog.PROBABILITY]:.4f}" if pd.notna(row[predlog.PROBABILITY]) else ""
        lines.append(f"  row {int(row[predlog.ROW])}: {answer}{probability}")
    tags = version.tags
    metrics = ", ".join(
        f"{k} {v:.4f}"
        for k, v in sorted(run.data.metrics.items())
        if k in ("quality", "macro_f1", "accuracy", "ece", "r2", "size_bytes")
    )
    lines += [
        f"MLflow run {run.info.run_id} ({run.data.tags.get('stage', '')}): {metrics}",
        f"  candidate {tags.get('candidate')}, gate {tags.get('gate')}, registered from the ONNX with sha256 "
        f"{tags.get('sha256', '')[:16]}",
        f"git commit {tags.get('git_commit')} (the code that trained it)",
        f"params hash {tags.get('params_hash', 'not recorded')[:16]}, data hash {tags.get('data_hash', '')[:16]}",
    ]
    if tags.get("production_snapshot"):
        lines.append(f"production rows {tags.get('production_rows')} from snapshot {tags['production_snapshot'][:16]}")
    lines.append("DVC data hashes (dvc.lock):")
    lines += [f"  {path}: {md5}" for path, md5 in sorted(found["hashes"].items()) if path.startswith("data/")]
    where = (
        f"commit {found['lock_commit'][:12]} records this data in dvc.lock"
        if found["lock_commit"]
        else "no commit records this data in dvc.lock; the select run logged the lock it used"
    )
    lines += [f"check out exactly that data ({where}):", f"  {found['checkout']}"]
    return lines


def main(argv: list[str] | None = None) -> None:
    from deploy.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("request_id", help="the X-Request-ID of a served prediction (in every answer's body)")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="the prediction log (default: the server's, DISTILLERY_SERVE_LOG_DIR or logs/predictions)",
    )
    parser.add_argument(
        "--write-lock",
        action="store_true",
        help="write the dvc.lock that version's select run logged into ./dvc.lock (then dvc checkout)",
    )
    args = parser.parse_args(argv)
    found = trace(args.request_id, args.log_dir or Path(load_settings().log_dir))
    if args.write_lock:
        print(f"wrote {write_lock(found)} as select's run logged it; now `dvc checkout` (or `dvc pull`)")
        return
    print("\n".join(describe(found)))


if __name__ == "__main__":
    run_cli(main)

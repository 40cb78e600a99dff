"""The MLflow registry as the pipeline and the server share it: the alias that
production follows, the tags every servable version carries, and the lineage
tags that lead from a version back to its data."""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Mapping

CHAMPION_ALIAS = "champion"  # register moves it last, only after every gate passed; the server follows it
SHA256_TAG = "sha256"  # on every registered version: the sha256 of its ONNX file
GATE_TAG = "gate"  # "passed" or "failed": the evaluation gate's verdict
DVC_TAG_PREFIX = "dvc/"  # + a path (or external/<hash>): dvc.lock's md5 of that input when the version was trained
LINEAGE_LOCK = "lineage/dvc.lock"  # the register run's artifact: dvc.lock as it stood when the version was registered
ONNX_ARTIFACT = "onnx"  # the registered pyfunc model's artifact key for the ONNX file (deploy/pyfunc.py)

# A version is created with all of these at once (tasks/register.py); one that lacks any was not made by a
# complete registration, has no provenance, and is never served nor reused.
REQUIRED_TAGS = (SHA256_TAG, GATE_TAG, "candidate", "task", "data_hash", "git_commit")

# What MLflow accepts as a tag key (mlflow.utils.validation): these characters, and a normalised relative path.
_TAG_KEY = re.compile(r"^[/\w.\- ]+$")
_EXTERNAL = "external/"


def missing_provenance(tags: Mapping[str, str]) -> list[str]:
    """The required tags a version lacks: empty for a complete version."""
    return [tag for tag in REQUIRED_TAGS if not tags.get(tag)]


def lineage_tags(hashes: Mapping[str, str]) -> dict[str, str]:
    """dvc.lock's md5 of each input as tags. A path inside the project is the
    key itself (`dvc/data/processed`); one MLflow would refuse as a key (an
    absolute path, `..`, odd characters, over MLflow's 250) is keyed by a stable hash of the path
    and carries the path in its value (`<md5> <path>`)."""
    tags = {}
    for path, md5 in hashes.items():
        norm = posixpath.normpath(path)
        if _TAG_KEY.match(path) and norm == path and not norm.startswith(("..", "/")) and len(path) < 200:
            tags[DVC_TAG_PREFIX + path] = md5
        else:
            key = hashlib.sha256(path.encode()).hexdigest()[:16]
            tags[f"{DVC_TAG_PREFIX}{_EXTERNAL}{key}"] = f"{md5} {path}"
    return tags


def lineage_hashes(tags: Mapping[str, str]) -> dict[str, str]:
    """lineage_tags' inverse: {path: md5} from a version's tags."""
    found = {}
    for key, value in tags.items():
        if not key.startswith(DVC_TAG_PREFIX):
            continue
        if key.startswith(DVC_TAG_PREFIX + _EXTERNAL):
            md5, _, path = value.partition(" ")
            found[path] = md5
        else:
            found[key.removeprefix(DVC_TAG_PREFIX)] = value
    return found


def onnx_files(folder) -> list:
    """The ONNX file(s) of a downloaded registered model: beside MLmodel (the
    older onnx flavor) or among its pyfunc artifacts (artifacts/)."""
    from pathlib import Path

    folder = Path(folder)
    return sorted(folder.glob("*.onnx")) + sorted((folder / "artifacts").glob("*.onnx"))


def complete_versions(client, registered_model: str, sha256: str | None = None, gate: str | None = None) -> list:
    """The versions of `registered_model` that carry their full provenance
    (optionally of this file, with this gate verdict), newest first. An
    incomplete one (a crash of an older registration, a hand-made version)
    is never returned, so it is never reused, reported or promoted."""
    from mlflow.exceptions import MlflowException

    query = f"name='{registered_model}'" + (f" and tag.{SHA256_TAG}='{sha256}'" if sha256 else "")
    try:
        found = client.search_model_versions(query)
    except MlflowException:  # no such registered model yet
        return []
    return sorted(
        (v for v in found if not missing_provenance(v.tags) and (gate is None or v.tags[GATE_TAG] == gate)),
        key=lambda v: -int(v.version),
    )


def alias_version(client, registered_model: str, alias: str = CHAMPION_ALIAS) -> str | None:
    """The version the alias points at now, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(registered_model, alias).version)
    except MlflowException:
        return None

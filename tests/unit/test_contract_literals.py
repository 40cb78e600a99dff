"""The formats of tasks/contracts are spelled there only. In deploy/, flows/
and the stage modules, an ONNX tensor name handed to onnxruntime, a key read
from a meta or metadata mapping, or a prediction-log column in SQL comes from
the contract's constants, never from a string literal of its own.

(The same words may name other things: an HTTP body field of the Open
Inference Protocol, an MLflow tag, a report key. Those are not these formats,
so the checks look at how a literal is used, not only at its spelling.)"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from tasks.contracts import onnx as onnx_contract
from tasks.contracts import predlog
from tasks.contracts.onnx import ArtifactMetadata
from tasks.contracts.processed import ProcessedMeta

REPO = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
FILES = sorted([*REPO.glob("deploy/*.py"), *REPO.glob("flows/*.py"), *(REPO / "tasks" / f"{s}.py" for s in STAGES)])
TENSORS = {
    onnx_contract.IMAGE_INPUT,
    onnx_contract.TABLE_INPUT,
    onnx_contract.LOGITS,
    onnx_contract.PROBABILITIES,
    onnx_contract.PREDICTION,
}
META_KEYS = {f.name for f in dataclasses.fields(ArtifactMetadata)} | {f.name for f in dataclasses.fields(ProcessedMeta)}
SQL = re.compile(r"\b(SELECT|INSERT|CREATE|UPDATE|DELETE|WHERE)\b")


def _strings(node: ast.AST) -> list[ast.Constant]:
    """The string literals in `node`, but not the keys of lookups (w["features"]
    reads a report, it hands no name to onnxruntime)."""
    keys = {id(n.slice) for n in ast.walk(node) if isinstance(n, ast.Subscript)}
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in keys]


def offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        # Tensor names given to a call: run([...], {...}), run_batches(..., output=...), export(input_name=...).
        # A TypedDict declared by call spells HTTP body fields (deploy/protocol.py), not tensors.
        if isinstance(node, ast.Call) and ast.unparse(node.func) != "TypedDict":
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                found += [
                    f"{path.name}:{c.lineno}: tensor name {c.value!r} passed to a call"
                    for c in _strings(arg)
                    if c.value in TENSORS
                ]
        # A key read from a meta / metadata mapping: meta["task"], metadata.get("classes").
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            owner = ast.unparse(node.value)
            if "meta" in owner and node.slice.value in META_KEYS:
                found.append(f"{path.name}:{node.lineno}: {owner}[{node.slice.value!r}]")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and "meta" in ast.unparse(node.func.value)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in META_KEYS
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        # Prediction-log columns inside SQL.
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            columns = [c for c in predlog.NAMES if re.search(rf"\b{c}\b", node.value)]
            if columns:
                found.append(f"{path.name}:{node.lineno}: SQL spells the columns {columns}")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_contract_names_come_from_the_contracts(path: Path) -> None:
    assert not offences(path), "spell these through tasks/contracts:\n" + "\n".join(offences(path))


def test_the_check_finds_each_kind_of_offence(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        'sess.run(["probabilities"], {"pixels": x})\n'
        'run_batches(sess, x, output="prediction")\n'
        'task = meta["task"]\n'
        'classes = metadata.get("classes")\n'
        'db.execute("SELECT ts, request_id FROM predictions")\n'
        'body = {"outputs": [], "model_name": "m"}  # an HTTP body: not a contract use\n'
    )
    kinds = offences(sample)
    assert len(kinds) == 6, kinds  # two tensor names in the first call, one in the second, two keys, one SQL

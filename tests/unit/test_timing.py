"""Latency as evaluate measures it (tasks/onnx/timing.py): interleaved rounds in
one process, medians. Selection must pick the truly faster of two models even
when the machine is busy. The assertion is an ordering, not a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from conftest import params_section
from onnx import TensorProto, helper, numpy_helper

from tasks.evaluate import measure_latency
from tasks.onnx.timing import Timings, latency_key
from tasks.select import select_champion

WIDTH = 192


def matmul_chain(path: Path, links: int) -> Path:
    """x -> (MatMul with a fixed random WIDTH x WIDTH weight) x `links`: work proportional to `links`."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / WIDTH).astype(np.float32), f"w{i}")
        for i in range(links)
    ]
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], ["y" if i == links - 1 else f"h{i}"])
        for i in range(links)
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_timings_are_interleaved_and_keep_every_sample() -> None:
    calls: list[str] = []
    timings = Timings({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, seconds=0.02, rounds=3)
    assert len(timings.rounds) == 3
    assert all(len(timings.all(n)) >= 9 for n in ("a", "b"))
    first_b = calls.index("b")
    assert "a" in calls[first_b:]  # a runs again after b: rounds alternate, not a-then-b
    assert timings.p10("a") <= timings.median("a") <= timings.p90("a")


def test_selection_picks_the_faster_of_two_models_while_the_other_core_is_busy(tmp_path: Path) -> None:
    files = {
        "teacher.fp32": matmul_chain(tmp_path / "slow.onnx", 6),  # 1.5x the work of
        "student.fp32": matmul_chain(tmp_path / "fast.onnx", 4),
    }
    x = np.random.default_rng(1).standard_normal((256, WIDTH)).astype(np.float32)
    params = params_section("evaluate", latency_threads=(1,), latency_seconds=1.5, latency_rounds=10)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the other core, spinning
    try:
        latency = measure_latency(files, x, params)
    finally:
        busy.kill()
        busy.wait()
    key = latency_key(256, 1)
    assert latency["student.fp32"][key] < latency["teacher.fp32"][key]
    assert {f"{key}_p10", f"{key}_p90", latency_key(1, 1)} <= set(latency["student.fp32"])
    same_quality = {"macro_f1": 0.9, "quality": 0.9, "size_bytes": 1000}
    candidates = {name: {**same_quality, **figures} for name, figures in latency.items()}
    select = params_section("select", precisions=("fp32",), speed_key=key, max_quality_drop=0.0)
    champion, table = select_champion(candidates, select)
    assert champion == "student.fp32"
    assert table["teacher.fp32"]["qualifies"]  # both qualify: speed alone decided

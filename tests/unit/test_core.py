"""tasks/core: atomic writes, JSON and npz IO, hashing, the CLI wrapper, report tables."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import atomic_path, load_npz, read_json, save_npz, write_json
from tasks.core.provenance import hash_arrays
from tasks.core.report import markdown_table


def test_atomic_path_leaves_no_file_when_the_body_raises(tmp_path):
    target = tmp_path / "out" / "artifact.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half written")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp file left behind either


def test_atomic_path_keeps_the_old_file_when_the_body_raises(tmp_path):
    target = tmp_path / "artifact.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.txt"]


def test_atomic_path_renames_on_success_and_makes_the_file_readable(tmp_path):
    target = tmp_path / "nested" / "artifact.txt"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["artifact.txt"]


def test_write_json_read_json_round_trip_with_numpy_and_paths(tmp_path):
    path = tmp_path / "report.json"
    write_json(
        path,
        {"f": np.float32(0.5), "i": np.int64(3), "a": np.arange(3), "p": Path("a/b"), "nested": {"x": [1, "y"]}},
    )
    assert read_json(path) == {"f": 0.5, "i": 3, "a": [0, 1, 2], "p": "a/b", "nested": {"x": [1, "y"]}}
    assert json.loads(path.read_text())["i"] == 3  # plain JSON on disk


def test_write_json_refuses_an_unserialisable_value_and_writes_nothing(tmp_path):
    path = tmp_path / "report.json"
    with pytest.raises(TypeError, match="object"):
        write_json(path, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_read_json_of_a_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DistilleryError) as err:
        read_json(path, "evaluation report")
    assert str(path) in str(err.value)
    assert "evaluation report" in str(err.value)


def test_read_json_of_invalid_json_names_the_path(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"a": 1,')
    with pytest.raises(DistilleryError) as err:
        read_json(path)
    assert str(path) in str(err.value)
    assert "not valid JSON" in str(err.value)


def test_save_npz_load_npz_round_trip(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([0, 2, 1], dtype=np.int64)
    save_npz(tmp_path / "split.npz", x=x, y=y)
    loaded = load_npz(tmp_path / "split.npz")
    assert set(loaded) == {"x", "y"}
    np.testing.assert_array_equal(loaded["x"], x)
    assert loaded["x"].dtype == np.float32 and loaded["y"].dtype == np.int64


def test_load_npz_of_a_missing_file_names_the_path(tmp_path):
    path = tmp_path / "train.npz"
    with pytest.raises(DistilleryError, match=str(path)):
        load_npz(path)


def test_hash_arrays_depends_on_content_dtype_shape_and_order():
    a = np.arange(6, dtype=np.int64)
    assert hash_arrays(a) == hash_arrays(a.copy())
    assert hash_arrays(a) != hash_arrays(a.astype(np.int32))
    assert hash_arrays(a.astype(np.float32)) != hash_arrays(a.astype(np.float64))
    assert hash_arrays(a.reshape(2, 3)) != hash_arrays(a.reshape(3, 2))
    assert hash_arrays(a) != hash_arrays(a.reshape(2, 3))
    b = a.copy()
    b[-1] += 1
    assert hash_arrays(a) != hash_arrays(b)
    assert hash_arrays(a, b) != hash_arrays(b, a)


def test_hash_arrays_ignores_memory_layout():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    fortran = np.asfortranarray(a)
    assert hash_arrays(a) == hash_arrays(fortran)
    assert hash_arrays(a.T) != hash_arrays(a)  # a different array, not just a different layout


def test_run_cli_turns_an_expected_failure_into_exit_2(capsys):
    def main() -> None:
        raise DistilleryError("params.yaml: 'train.lr': must be float")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "params.yaml: 'train.lr': must be float" in captured.err
    assert "Traceback" not in captured.err


def test_run_cli_lets_a_bug_raise():
    def main() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(main)


def test_markdown_table_formats_rows_and_the_empty_case():
    assert markdown_table([]) == "_(none)_"
    table = markdown_table([{"name": "a", "score": 0.123456}, {"name": "b", "score": 2}])
    lines = table.splitlines()
    assert lines[0] == "| name | score |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| a | 0.1235 |"
    assert lines[3] == "| b | 2 |"


def test_markdown_table_lines_up_rows_with_different_keys():
    # An int8 row carries a key the fp32 row lacks; a later row lacks one the first has.
    rows = [
        {"candidate": "teacher.fp32", "macro_f1": 0.9, "latency_ms_b1": 1.5},
        {"candidate": "teacher.int8", "macro_f1": 0.89, "int8_agreement": 0.98, "latency_ms_b1": 0.7},
        {"candidate": "student.fp32", "latency_ms_b1": 0.4},
    ]
    lines = markdown_table(rows).splitlines()
    headers = ["candidate", "macro_f1", "latency_ms_b1", "int8_agreement"]
    assert lines[0] == "| " + " | ".join(headers) + " |"
    assert lines[1] == "|---|---|---|---|"
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    assert all(len(row) == len(headers) for row in cells)
    assert [dict(zip(headers, row)) for row in cells] == [
        {"candidate": "teacher.fp32", "macro_f1": "0.9", "latency_ms_b1": "1.5", "int8_agreement": ""},
        {"candidate": "teacher.int8", "macro_f1": "0.89", "latency_ms_b1": "0.7", "int8_agreement": "0.98"},
        {"candidate": "student.fp32", "macro_f1": "", "latency_ms_b1": "0.4", "int8_agreement": ""},
    ]

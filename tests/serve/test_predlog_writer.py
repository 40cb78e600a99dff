"""The prediction log's writer formats runs of like entries at once
(deploy.predlog.stacked_records); the rows it writes are exactly those of the
contract's own records(), in the same order, whatever the mix of entries."""

from __future__ import annotations

import json

import numpy as np

from deploy.predlog import stacked_records
from tasks.contracts import predlog
from tasks.contracts.predlog import Entry

DIGITS = tuple(str(d) for d in range(10))


def _entry(i: int, task: str = "multiclass", rows: int = 1, version: str = "1", table: bool = False, **kw) -> Entry:
    rng = np.random.default_rng(i)
    width = {"regression": 1, "binary": 2, "multilabel": 4}.get(task, 10)
    classes = () if task == "regression" else DIGITS[:width]
    outputs = rng.random((rows, width)).astype(np.float32)
    if task in ("multiclass", "binary"):
        outputs /= outputs.sum(axis=1, keepdims=True)
    return Entry(
        ts=1_000_000.0 + i,
        request_id=f"r{i}",
        endpoint="infer" if i % 7 == 0 else "predict",
        model_name="distillery",
        model_version=version,
        latency_ms=0.25 + i,
        task=task,
        classes=classes,
        threshold=0.5,
        x=rng.integers(0, 17, size=(rows, 1, 8, 8)).astype(np.float32),
        rows=[{"bill": float(i), "island": "Dream"} for _ in range(rows)] if table else None,
        outputs=outputs,
        **kw,
    )


def _refused(i: int) -> Entry:
    return Entry(1_000_000.0 + i, f"r{i}", "predict", "distillery", "1", 0.1, status=422, error="rows[0]: bad")


def test_stacked_rows_are_the_contract_rows_in_order():
    entries = (
        [_entry(i) for i in range(30)]  # one long run
        + [_entry(30, rows=3), _entry(31), _entry(32, rows=2)]  # requests of several rows in it
        + [_refused(33), _entry(34), _refused(35), _refused(36)]  # refusals break runs
        + [_entry(37, version="2"), _entry(38, version="2"), _entry(39)]  # a reload in between
        + [_entry(40, table=True, rows=2), _entry(41, table=True), _entry(42)]  # table rows are logged as sent
        + [_entry(43 + i, task=task) for i, task in enumerate(("regression", "regression", "multilabel"))]
        + [_entry(46, task="multilabel", rows=2), _entry(47, task="binary"), _entry(48, task="binary")]
        + [
            _entry(49, pictures=[(30, 20, 3, "PNG")]),
            _entry(50, rows=2, pictures=[(9, 9, 1, "JPEG"), (1, 2, 3, "GIF")]),
        ]
        + [_entry(51), _entry(52, pictures=[(5, 6, 3, "WEBP")])]  # picture files and pixels break runs
    )
    stacked = stacked_records(entries)
    assert stacked == predlog.records(entries)
    assert len(stacked) == sum(len(e) for e in entries)
    assert [(r[1], r[2]) for r in stacked[30:36]] == [
        ("r30", 0),
        ("r30", 1),
        ("r30", 2),
        ("r31", 0),
        ("r32", 0),
        ("r32", 1),
    ]
    # A picture file's width, height, channels and format go into its row's inputs, next to the pixel summary.
    described = [json.loads(row[predlog.NAMES.index(predlog.INPUTS)]) for row in stacked[-5:]]
    assert [tuple(d.get(k) for k in predlog.PICTURE) for d in described] == [
        (30, 20, 3, "PNG"),
        (9, 9, 1, "JPEG"),
        (1, 2, 3, "GIF"),
        (None, None, None, None),
        (5, 6, 3, "WEBP"),
    ]
    assert all(set(predlog.IMAGE_SUMMARY) <= set(d) for d in described)


def test_one_entry_and_none():
    assert stacked_records([]) == []
    one = [_entry(0, rows=4)]
    assert stacked_records(one) == predlog.records(one)

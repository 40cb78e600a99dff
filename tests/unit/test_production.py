"""The production snapshot (tasks.monitor.snapshot, tasks.contracts.production):
late labels joined to a prediction log written by the server's own writer,
judged, and appended by ingest to the source's rows."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT

from tasks.contracts import production as snap
from tasks.contracts.dataset import write_dataset
from tasks.contracts.processed import ProcessedMeta, write_meta
from tasks.core import paths
from tasks.core.params import load_params
from tasks.data.encoding import fit_encoder
from tasks.ingest import ingest
from tasks.monitor import snapshot

PENGUINS = ("Adelie", "Chinstrap", "Gentoo")
FEATURES = {"Island": "categorical", "Culmen Length (mm)": "numeric", "Body Mass (g)": "numeric"}


def _row(i: int) -> dict:
    return {
        "Island": ["Biscoe", "Dream", "Torgersen"][i % 3],
        "Culmen Length (mm)": 40.0 + i,
        "Body Mass (g)": 4000 + 10 * i,
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A penguins project after ingest and preprocess (their metas), with a
    prediction log of requests r0..r4, one row each, answered by version 7."""
    from deploy.predlog import Entry, PredictionLog

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["source"] = "penguins"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_dataset(paths.INGESTED, ingest(load_params(paths.PARAMS).data))
    encoder = fit_encoder(pd.DataFrame([_row(i) for i in range(6)]), FEATURES, "median")
    write_meta(
        ProcessedMeta(
            kind="tabular",
            task="multiclass",
            classes=PENGUINS,
            input_shape=(4,),
            mean=(0.0,) * 4,
            std=(1.0,) * 4,
            data_hash="h",
            resample="none",
            counts={},
            encoder=encoder,
        )
    )
    log = PredictionLog(tmp_path / "logs/predictions", max_buffer=1000, flush_interval_s=0.05, count=lambda *_: None)
    log.start()
    now = time.time()
    for i in range(5):
        log.append(
            Entry(
                ts=now - 100 + i,
                request_id=f"r{i}",
                endpoint="predict",
                model_name="distillery",
                model_version="7",
                latency_ms=1.0,
                task="multiclass",
                classes=PENGUINS,
                rows=[_row(i)],
                outputs=np.array([[0.2, 0.3, 0.5]], dtype=np.float32),
            )
        )
    log.close()
    return tmp_path


def _feedback(root: Path, rows: list[tuple[str, int, str]], name: str = "labels.csv") -> None:
    folder = root / "logs/feedback"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["request_id", "row", "label"]).to_csv(folder / name, index=False)


LABELS = [
    ("r0", 0, "Gentoo"),
    ("r1", 0, "Adelie"),
    ("r1", 0, "Adelie"),  # the same label twice: one row, one duplicate quarantined
    ("r2", 0, "Adelie"),
    ("r2", 0, "Gentoo"),  # conflicting: both quarantined
    ("r3", 0, "Emperor"),  # not a class of the model
    ("r4", 0, ""),  # no label
    ("nowhere", 0, "Adelie"),  # no such prediction
]


def test_labels_become_rows_or_quarantine_with_a_reason_and_none_is_lost(project: Path) -> None:
    _feedback(project, LABELS)
    built = snapshot.build(project)
    rows = built.rows
    assert rows[snap.REQUEST_ID].tolist() == ["r0", "r1"]
    assert rows["Species"].tolist() == ["Gentoo", "Adelie"]  # the label lands in the user's target column
    assert rows["Island"].tolist() == ["Biscoe", "Dream"] and rows["Body Mass (g)"].tolist() == ["4000", "4010"]
    assert set(rows[snap.MODEL_VERSION]) == {"7"} and set(rows[snap.FILE]) == {"labels.csv"}
    assert built.reasons == {
        snap.CONFLICTING_LABELS: 2,
        snap.DUPLICATE_LABEL: 1,
        snap.MISSING_LABEL: 1,
        snap.NO_PREDICTION: 1,
        snap.UNKNOWN_CLASS: 1,
    }
    assert len(rows) + len(built.quarantine) == len(LABELS)
    on_disk = snap.read_snapshot(project / "data/production")
    assert on_disk.sha256 == built.sha256 and len(on_disk.quarantine) == 6
    assert sorted(on_disk.quarantine[snap.REASON]) == sorted(built.quarantine[snap.REASON])


def test_an_unchanged_rebuild_touches_no_file_so_dvc_reruns_nothing(project: Path) -> None:
    _feedback(project, LABELS[:2])
    snapshot.build(project)
    folder = project / "data/production"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    time.sleep(0.01)
    again = snapshot.build(project)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert len(again.rows) == 2


def test_rows_stay_once_labelled_and_a_new_label_replaces_the_old(project: Path) -> None:
    _feedback(project, [("r0", 0, "Gentoo"), ("r1", 0, "Adelie")])
    snapshot.build(project)
    (project / "logs/feedback/labels.csv").unlink()  # the feedback file and the log are gone...
    for path in (project / "logs/predictions").iterdir():
        path.unlink()
    assert snapshot.build(project).rows[snap.REQUEST_ID].tolist() == ["r0", "r1"]  # ...the rows are not


def test_ingest_appends_the_newest_rows_up_to_the_share_and_records_the_snapshot(project: Path) -> None:
    params = load_params(paths.PARAMS).data
    source_rows = ingest(params).meta.rows
    _feedback(project, [(f"r{i}", 0, PENGUINS[i % 3]) for i in range(5)])
    built = snapshot.build(project)
    dataset = ingest(params)
    assert dataset.meta.rows == source_rows + 5 and dataset.meta.production_rows == 5
    assert dataset.meta.production_snapshot == built.sha256 and dataset.meta.production_left_out == 0
    tail = dataset.table.iloc[source_rows:]
    assert tail["Species"].tolist() == [PENGUINS[i % 3] for i in range(5)]
    assert tail["row_id"].tolist() == list(range(source_rows, source_rows + 5))
    assert not set(snap.LINEAGE) & set(dataset.table.columns)  # lineage stays in the snapshot
    assert tail["Individual ID"].tolist() == [""] * 5  # a column the client did not send: missing, for the gate

    capped = ingest(
        dataclasses.replace(params, production=dataclasses.replace(params.production, max_share=2 / source_rows))
    )
    assert capped.meta.production_rows == 2 and capped.meta.production_left_out == 3
    assert capped.table["Species"].iloc[-2:].tolist() == [PENGUINS[3 % 3], PENGUINS[4 % 3]]  # the newest two


def test_an_image_model_s_labels_are_quarantined_as_such(project: Path) -> None:
    write_meta(
        ProcessedMeta(
            kind="image",
            task="multiclass",
            classes=PENGUINS,
            input_shape=(1, 8, 8),
            mean=(8.0,),
            std=(4.0,),
            data_hash="h",
            resample="none",
            counts={},
            pixel_max=16.0,
        )
    )
    _feedback(project, [("r0", 0, "Gentoo")])
    built = snapshot.build(project)
    assert built.rows.empty and built.reasons == {snap.IMAGE_INPUTS: 1}


def test_a_feedback_file_without_the_key_columns_is_named(project: Path) -> None:
    from tasks.core.errors import DistilleryError

    folder = project / "logs/feedback"
    folder.mkdir(parents=True)
    pd.DataFrame({"request_id": ["r0"], "label": ["Gentoo"]}).to_csv(folder / "bad.csv", index=False)
    with pytest.raises(DistilleryError, match=r"bad.csv: feedback file lacks the columns \['row'\]"):
        snapshot.build(project)

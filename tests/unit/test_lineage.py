"""The lineage a registered version records is the run that trained it, read from dvc.lock while
register runs: never register's own entry, which is still its previous run's."""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.evaluation.card import dvc_hashes


def test_register_reads_this_runs_hashes_not_its_own_stale_entry(tmp_path: Path) -> None:
    # As dvc.lock stands while register runs after `dvc exp run` on other data: every earlier stage
    # rewritten, register's entry (deps of data/processed and its code) from the experiment before.
    lock = {
        "schema": "2.0",
        "stages": {
            "ingest": {"deps": [{"path": "../drawings", "md5": "new-raw.dir"}], "outs": []},
            "preprocess": {
                "deps": [{"path": "data/validated", "md5": "new-valid.dir"}],
                "outs": [{"path": "data/processed", "md5": "new-processed.dir"}],
            },
            "train": {"deps": [{"path": "data/processed", "md5": "new-processed.dir"}], "outs": []},
            "register": {
                "deps": [
                    {"path": "data/processed", "md5": "old-processed.dir"},
                    {"path": "tasks/register.py", "md5": "old-code"},
                ],
                "outs": [],
            },
        },
    }
    path = tmp_path / "dvc.lock"
    path.write_text(yaml.safe_dump(lock))
    everything = dvc_hashes(path, everything=True)
    assert everything["data/processed"] == "new-processed.dir"
    assert everything["../drawings"] == "new-raw.dir" and "tasks/register.py" not in everything
    assert dvc_hashes(path)["data/processed"] == "new-processed.dir"


def test_a_producing_stage_wins_over_a_later_stages_dep(tmp_path: Path) -> None:
    lock = {
        "stages": {
            "preprocess": {"outs": [{"path": "data/processed", "md5": "made.dir"}]},
            "train": {"deps": [{"path": "data/processed", "md5": "read-earlier.dir"}]},
        }
    }
    path = tmp_path / "dvc.lock"
    path.write_text(yaml.safe_dump(lock))
    assert dvc_hashes(path, everything=True)["data/processed"] == "made.dir"

"""Hot reload: the registry alias (or the file) moves while clients keep
sending; the new model is swapped in with no failed request, and a bad
candidate, or one clients could not call the same way, is refused while the
old model keeps serving."""

from __future__ import annotations

import signal
import time

import numpy as np
import pandas as pd
import pytest

from .serve_helpers import (
    ENCODER_ROWS,
    PENGUINS,
    TABLE_COLUMNS,
    Load,
    free_port,
    mlflow_server,
    onnx_outputs,
    read_log,
    register,
    replace_file,
    table_encoder,
    table_model,
    wait_until,
)

# One island more than ENCODER_ROWS ("Anvers" where it had a gap): the encoded input is 8 wide, not 7,
# while clients send the same four columns.
WIDER_ROWS = {**ENCODER_ROWS, "island": ["Biscoe", "Dream", "Torgersen", "Anvers"]}
RENAMED = {"island": "region"}
TABLE_ROWS = [
    {"bill": 39.1, "mass": 3750, "island": "Torgersen", "sex": "MALE"},
    {"bill": None, "mass": 4200, "island": "Anvers", "sex": "FEMALE"},  # unseen by version 1 (all zeros)
]


@pytest.fixture(scope="module")
def table_versions(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Table models retrained on other data: same raw columns but a category more,
    a column renamed, a column of another kind."""
    folder = tmp_path_factory.mktemp("table_versions")
    renamed = table_encoder(
        {RENAMED.get(c, c): v for c, v in ENCODER_ROWS.items()},
        {RENAMED.get(c, c): k for c, k in TABLE_COLUMNS.items()},
    )
    return {
        "wider": table_model(folder / "wider.onnx", seed=1, encoder=table_encoder(WIDER_ROWS)),
        "renamed": table_model(folder / "renamed.onnx", seed=2, encoder=renamed),
        "bill_categorical": table_model(
            folder / "bill_categorical.onnx",
            seed=3,
            encoder=table_encoder(ENCODER_ROWS, {**TABLE_COLUMNS, "bill": "categorical"}),
        ),
    }


def _reloads(server, outcome: str) -> float:
    return server.metric("distillery_model_reloads_total", outcome=outcome)


def test_moving_the_alias_under_load_swaps_the_model_with_no_failed_request(serve, models, registry):
    assert register(registry, models["image"]) == "1"
    server = serve("models:/tiny@champion", tracking_uri=registry, poll_interval_s=0.2)
    assert server.client.get("/v2/models/tiny").json()["versions"] == ["1"]
    with Load(server, model_name="tiny") as load:
        load.wait_for_version("1")
        assert register(registry, models["image_v2"]) == "2"
        load.wait_for_version("2")
        time.sleep(0.3)  # and it keeps answering on the new model
    assert len(load.results) > 20
    assert load.failures() == []
    assert load.versions() == {"1", "2"}
    for thread in {t for t, _, _ in load.results}:  # each client sees 1 until the swap, then 2
        seen = [v for t, _, v in load.results if t == thread]
        assert seen == sorted(seen), seen
    assert server.client.get("/v2/models/tiny").json()["versions"] == ["2"]
    assert server.metric("distillery_model_info", name="tiny", version="2") == 1
    assert server.metric("distillery_model_version") == 2
    assert _reloads(server, "success") == 1


def test_bad_candidates_are_refused_and_the_old_model_keeps_serving(serve, models, registry):
    register(registry, models["image"])
    server = serve("models:/tiny@champion", tracking_uri=registry, poll_interval_s=0.2)
    with Load(server, threads=2, model_name="tiny") as load:
        # A model clients could not call the same way (4 classes instead of 3).
        assert register(registry, models["four_classes"]) == "2"
        wait_until(lambda: _reloads(server, "failure") >= 1, message="other classes were not refused")
        # The right model, but the file is not the one registered (sha256 tag differs).
        assert register(registry, models["image_v2"], sha256="0" * 64) == "3"
        wait_until(lambda: _reloads(server, "failure") >= 2, message="the sha256 mismatch was not refused")
        assert server.client.get("/v2/health/ready").status_code == 200
        assert server.client.get("/v2/models/tiny").json()["versions"] == ["1"]
        # A good one after them is taken.
        assert register(registry, models["image_v3"]) == "4"
        load.wait_for_version("4")
    assert load.failures() == []
    assert load.versions() == {"1", "4"}
    log = server.log()
    assert "refused a new model" in log and "sha256" in log
    assert "classes differ: ['a', 'b', 'c'] in the served model, ['c0', 'c1', 'c2', 'c3'] in the candidate" in log
    assert _reloads(server, "failure") == 2 and _reloads(server, "success") == 1


def test_a_table_model_with_a_category_more_is_swapped_in_under_load(serve, models, table_versions, registry):
    """The retrained model's encoded input is wider, but clients send the same
    columns: it is taken, and each request is encoded for the model that runs it."""
    assert register(registry, models["table"]) == "1"
    server = serve("models:/tiny@champion", tracking_uri=registry, poll_interval_s=0.2)
    assert server.client.get("/v2/models/tiny").json()["inputs"][0]["shape"] == [-1, 7]
    with Load(server, model_name="tiny", rows=TABLE_ROWS) as load:
        load.wait_for_version("1")
        assert register(registry, table_versions["wider"]) == "2"
        load.wait_for_version("2")
    assert load.failures() == []
    assert load.versions() == {"1", "2"}
    for thread in {t for t, _, _ in load.results}:  # each client sees 1 until the swap, then 2
        seen = [v for t, _, v in load.results if t == thread]
        assert seen == sorted(seen), seen
    meta = server.client.get("/v2/models/tiny").json()  # the metadata describes the model now served
    assert meta["versions"] == ["2"] and meta["inputs"][0]["shape"] == [-1, 8]
    assert meta["parameters"]["columns"]["categorical"]["island"] == ["Anvers", "Biscoe", "Dream", "Torgersen"]
    assert _reloads(server, "success") == 1 and _reloads(server, "failure") == 0
    assert "v2 infer clients that send encoded features must follow /v2/models/tiny" in server.log()

    # The new island reaches version 2 one-hot, through version 2's encoder.
    r = server.predict(TABLE_ROWS[1:])
    assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    x = table_encoder(WIDER_ROWS).encode(pd.DataFrame(TABLE_ROWS[1:]))
    assert x[0, 2:6].tolist() == [1, 0, 0, 0]  # Anvers, Biscoe, Dream, Torgersen
    want = onnx_outputs(table_versions["wider"], x)["probabilities"][0]
    got = [r.json()["predictions"][0]["probabilities"][c] for c in PENGUINS]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_table_model_that_takes_other_columns_is_refused_naming_them(serve, models, table_versions, registry):
    register(registry, models["table"])
    server = serve("models:/tiny@champion", tracking_uri=registry, poll_interval_s=0.2)
    with Load(server, threads=2, model_name="tiny", rows=TABLE_ROWS) as load:
        load.wait_for_version("1")
        assert register(registry, table_versions["renamed"]) == "2"
        wait_until(lambda: _reloads(server, "failure") >= 1, message="a renamed column was not refused")
        assert register(registry, table_versions["bill_categorical"]) == "3"
        wait_until(lambda: _reloads(server, "failure") >= 2, message="a column of another kind was not refused")
        assert server.client.get("/v2/health/ready").status_code == 200
        answered = len(load.results)
        wait_until(lambda: len(load.results) > answered + 10, message="requests stopped being answered")
    assert load.failures() == []
    assert load.versions() == {"1"}
    assert server.client.get("/v2/models/tiny").json()["versions"] == ["1"]
    log = server.log()
    assert "columns added: ['region']; columns removed: ['island']" in log
    assert "column 'bill' is numeric in the served model and categorical in the candidate" in log
    # An explicit reload tries the refused candidate again, and says why it is refused.
    r = server.client.post("/v2/repository/models/tiny/load")
    assert r.status_code == 409 and r.json()["model_version"] == "1"
    assert "column 'bill' is numeric in the served model and categorical in the candidate" in r.json()["error"]
    assert _reloads(server, "success") == 0


def test_requests_queued_for_two_models_never_share_an_onnxruntime_run(models, table_versions):
    """Rows encoded for version 1 (7 features) and version 2 (8) wait in one
    queue, as they do around a swap: each model runs its own, in one run."""
    import asyncio

    from deploy.batching import Batcher
    from deploy.model import build_model
    from deploy.protocol import encode_rows

    paths = {"1": models["table"], "2": table_versions["wider"]}
    loaded = {
        v: build_model(p.read_bytes(), name="tiny", version=v, source=str(p), threads=1, folder=p.parent)
        for v, p in paths.items()
    }
    runs: list[int] = []

    async def submit_all() -> list:
        batcher = Batcher(max_batch=64, max_wait_s=0, observe=lambda rows, seconds: runs.append(rows))
        batcher.start()
        # Gathered: all four are queued before the batcher takes a batch. Bounded: rows of two widths
        # in one batch would stop the batcher and leave the requests waiting.
        outputs = await asyncio.wait_for(
            asyncio.gather(
                *(batcher.submit(loaded[v], encode_rows(TABLE_ROWS, loaded[v].encoder)) for v in ("1", "2", "1", "2"))
            ),
            60,
        )
        await batcher.close()
        return outputs

    for version, out in zip(("1", "2", "1", "2"), asyncio.run(submit_all())):
        x = encode_rows(TABLE_ROWS, loaded[version].encoder)
        np.testing.assert_allclose(out["probabilities"], onnx_outputs(paths[version], x)["probabilities"], rtol=1e-6)
    assert runs == [4, 4]  # one run per model, its two requests together


def test_a_version_without_a_sha256_tag_is_not_served(serve, models, registry):
    from mlflow import MlflowClient

    register(registry, models["image"])
    MlflowClient(registry).delete_model_version_tag("tiny", "1", "sha256")
    server = serve("models:/tiny@champion", ready=False, tracking_uri=registry)
    assert server.proc.wait(timeout=60) == 2
    assert "no sha256 tag" in server.log() and "Traceback" not in server.log()


def test_replacing_the_file_under_load_swaps_the_model(serve, models, tmp_path):
    path = tmp_path / "model.onnx"
    replace_file(path, models["image"])
    server = serve(path, poll_interval_s=0.1)
    first = server.client.get("/v2/models/distillery").json()["versions"][0]
    with Load(server) as load:
        load.wait_for_version(first)
        replace_file(path, models["image_v2"])
        wait_until(lambda: len(load.versions()) == 2, message="the new file was not picked up")
        second = (load.versions() - {first}).pop()
        # A broken file, then one with other classes: both refused, still serving.
        replace_file(path, b"not an onnx model")
        wait_until(lambda: _reloads(server, "failure") >= 1, message="the broken file was not refused")
        replace_file(path, models["four_classes"])
        wait_until(lambda: _reloads(server, "failure") >= 2, message="other classes were not refused")
        assert server.client.get("/v2/health/ready").status_code == 200
        time.sleep(0.2)
    assert load.failures() == []
    assert load.versions() == {first, second}
    assert server.client.get("/v2/models/distillery").json()["versions"] == [second]


def test_explicit_reload_by_request_and_by_sighup(serve, models, tmp_path):
    path = tmp_path / "model.onnx"
    replace_file(path, models["image"])
    server = serve(path)  # no polling
    version = lambda: server.client.get("/v2/models/distillery").json()["versions"][0]  # noqa: E731
    first = version()
    r = server.client.post("/v2/repository/models/distillery/load")
    assert r.status_code == 200 and r.json()["status"] == "unchanged"

    replace_file(path, models["four_classes"])
    r = server.client.post("/v2/repository/models/distillery/load")
    assert r.status_code == 409 and r.json()["status"] == "refused" and "classes differ" in r.json()["error"]
    assert version() == first

    replace_file(path, models["image_v2"])
    r = server.client.post("/v2/repository/models/distillery/load")
    assert r.status_code == 200 and r.json()["status"] == "loaded"
    second = r.json()["model_version"]
    assert second != first and version() == second

    replace_file(path, models["image_v3"])
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: version() not in (first, second), message="SIGHUP did not reload")
    assert server.client.post("/v2/repository/models/other/load").status_code == 404


def test_the_tracking_server_going_down_stops_no_answer_and_loses_no_logged_row(
    serve, models, empty_registry, tmp_path
):
    """MLflow (a real tracking server) dies under load: every request is still
    answered by the loaded model and logged; once MLflow is back, the alias is
    followed again."""
    import os
    import shutil
    import signal

    backend, artifacts, log = tmp_path / "mlflow.db", tmp_path / "artifacts", tmp_path / "mlflow.log"
    shutil.copyfile(empty_registry, backend)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow_proc = mlflow_server(port, backend, artifacts, log)
    try:
        assert register(uri, models["image"]) == "1"
        server = serve("models:/tiny@champion", tracking_uri=uri, poll_interval_s=0.2, log_flush_interval_s=0.1)
        with Load(server, model_name="tiny") as load:
            load.wait_for_version("1")
            os.killpg(mlflow_proc.pid, signal.SIGKILL)
            mlflow_proc.wait()
            answered_before = len(load.results)
            wait_until(lambda: len(load.results) > answered_before + 100, message="requests stopped being answered")
            assert server.client.get("/v2/health/ready").status_code == 200
            mlflow_proc = mlflow_server(port, backend, artifacts, log)
            assert register(uri, models["image_v2"]) == "2"
            load.wait_for_version("2", timeout=120)
        assert load.failures() == [] and load.versions() == {"1", "2"}
        assert "cannot check for a new model" in server.log()  # the polls that found MLflow down, said once
        answered = sum(1 for _, status, _ in load.results if status == 200)
        server.stop(signal.SIGTERM)
        assert len({row["request_id"] for row in read_log(server.log_dir)}) == answered  # every answered request
    finally:
        if mlflow_proc.poll() is None:
            os.killpg(mlflow_proc.pid, signal.SIGKILL)
            mlflow_proc.wait()


def test_an_incomplete_version_is_not_served(serve, models, registry):
    """A version made without the provenance tasks.register gives every version at creation (its sha256
    is there, its gate verdict and lineage are not): the server refuses it, naming what is missing."""
    from mlflow import MlflowClient

    register(registry, models["image"])
    MlflowClient(registry).delete_model_version_tag("tiny", "1", "gate")
    server = serve("models:/tiny@champion", ready=False, tracking_uri=registry)
    assert server.proc.wait(timeout=60) == 2
    assert "is incomplete (no gate tag)" in server.log() and "Traceback" not in server.log()

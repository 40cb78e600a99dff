"""Hot reload: the registry alias (or the file) moves while clients keep
sending; the new model is swapped in with no failed request, and a bad
candidate is refused while the old model keeps serving."""

from __future__ import annotations

import signal
import time

from .serve_helpers import Load, free_port, mlflow_server, read_log, register, replace_file, wait_until


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
        wait_until(lambda: _reloads(server, "failure") >= 1, message="the wrong signature was not refused")
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
    assert "refused a new model" in log and "signature" in log and "sha256" in log
    assert _reloads(server, "failure") == 2 and _reloads(server, "success") == 1


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
        # A broken file, then one of another signature: both refused, still serving.
        replace_file(path, b"not an onnx model")
        wait_until(lambda: _reloads(server, "failure") >= 1, message="the broken file was not refused")
        replace_file(path, models["four_classes"])
        wait_until(lambda: _reloads(server, "failure") >= 2, message="the wrong signature was not refused")
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
    assert r.status_code == 409 and r.json()["status"] == "refused" and "signature" in r.json()["error"]
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


def test_the_tracking_server_going_down_stops_no_answer_and_loses_no_logged_row(serve, models, empty_registry, tmp_path):
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

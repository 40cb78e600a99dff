"""The Open Inference Protocol (v2) and /predict, against a real server: the
answers are onnxruntime's own, in every form a client may use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .serve_helpers import CLASSES, onnx_outputs, pixels


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"], max_rows=64)


def test_health_and_server_metadata(server):
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    meta = server.client.get("/v2").json()
    assert meta["name"] == "distillery" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_names_tensors_with_a_batch_dimension(server, models):
    meta = server.client.get("/v2/models/distillery").json()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["parameters"]["classes"] == CLASSES
    assert meta["parameters"]["data_hash"] == "hash0"
    assert (meta["parameters"]["task"], meta["parameters"]["answer"]) == ("multiclass", "probabilities")
    version = meta["versions"][0]
    assert meta["parameters"]["sha256"].startswith(version)  # a file's version is its sha256 prefix
    assert server.client.get(f"/v2/models/distillery/versions/{version}").status_code == 200
    assert server.client.get("/v2/models/distillery/ready").status_code == 200


def test_unknown_model_or_version_is_404_naming_the_field(server):
    r = server.client.get("/v2/models/other")
    assert r.status_code == 404 and r.json()["field"] == "model_name"
    r = server.client.post("/v2/models/other/infer", json={"inputs": []})
    assert r.status_code == 404 and r.json()["field"] == "model_name"
    r = server.client.get("/v2/models/distillery/versions/999")
    assert r.status_code == 404 and r.json()["field"] == "model_version"


def test_v2_infer_equals_onnxruntime_on_the_same_inputs(server, models):
    x = pixels(5, seed=1)
    r = server.infer(x)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "distillery" and body["model_version"]
    expected = onnx_outputs(models["image"], x)
    outputs = {o["name"]: o for o in body["outputs"]}
    assert set(outputs) == {"logits", "probabilities"}
    for name, want in expected.items():
        assert outputs[name]["datatype"] == "FP32" and outputs[name]["shape"] == [5, 3]
        got = np.asarray(outputs[name]["data"], dtype=np.float32).reshape(5, 3)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_v2_infer_takes_nested_data_and_answers_requested_outputs_with_the_id(server, models):
    x = pixels(2, seed=2)
    body = {
        "id": "req-42",
        "inputs": [{"name": "pixels", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    r = server.client.post("/v2/models/distillery/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-42"
    assert [o["name"] for o in out["outputs"]] == ["probabilities"]
    got = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, onnx_outputs(models["image"], x)["probabilities"], rtol=1e-6, atol=1e-7)


def test_v2_infer_on_the_versioned_path(server):
    version = server.client.get("/v2/models/distillery").json()["versions"][0]
    x = pixels(1)
    body = {"inputs": [{"name": "pixels", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert server.client.post(f"/v2/models/distillery/versions/{version}/infer", json=body).status_code == 200


def test_binary_tensor_extension_in_and_out(server, models):
    """Triton's clients send binary tensors by default: a JSON header, then raw
    little-endian FP32, its length in Inference-Header-Content-Length."""
    x = pixels(3, seed=3)
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [3, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "logits", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    r = server.client.post(
        "/v2/models/distillery/infer",
        content=header + raw,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:length])
    expected = onnx_outputs(models["image"], x)
    probs_meta, logits_meta = meta["outputs"]
    assert probs_meta["parameters"]["binary_data_size"] == 3 * 3 * 4
    probs = np.frombuffer(r.content[length:], dtype="<f4").reshape(3, 3)
    np.testing.assert_allclose(probs, expected["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(logits_meta["data"], np.float32).reshape(3, 3), expected["logits"], rtol=1e-6, atol=1e-6
    )


def test_predict_accepts_each_row_layout_and_answers_classes_and_probabilities(server, models):
    x = pixels(2, seed=4)
    expected = onnx_outputs(models["image"], x)["probabilities"]
    for rows in (x.tolist(), x[:, 0].tolist(), x.reshape(2, -1).tolist()):  # [1,8,8], [8,8], flat 64
        r = server.predict(rows)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "distillery" and body["request_id"] == r.headers["x-request-id"]
        assert body["task"] == "multiclass"
        for prediction, want in zip(body["predictions"], expected):
            assert prediction["class"] == CLASSES[int(want.argmax())]
            assert prediction["probability"] == pytest.approx(float(want.max()), rel=1e-6)
            assert list(prediction["probabilities"]) == CLASSES
            np.testing.assert_allclose(list(prediction["probabilities"].values()), want, rtol=1e-6, atol=1e-7)


def test_a_sent_request_id_is_kept(server):
    r = server.predict(pixels(1).tolist(), headers={"X-Request-ID": "trace-0001"})
    assert r.headers["x-request-id"] == "trace-0001" and r.json()["request_id"] == "trace-0001"


def test_openapi_document_and_docs(server):
    doc = server.client.get("/openapi.json").json()
    assert {"/predict", "/v2/models/{name}/infer", "/v2/health/ready"} <= set(doc["paths"])
    assert "InferRequest" in doc["components"]["schemas"]
    assert "security" not in doc  # no token configured
    r = server.client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert "cdn" not in r.text and "https://" not in r.text  # its script and style come from the server itself
    js = server.client.get("/docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"] == "text/javascript" and len(js.content) > 100_000
    assert server.client.get("/docs/swagger-ui.css").headers["content-type"] == "text/css"
    assert server.client.get("/docs/other.js").status_code == 404


def test_docs_render_in_chromium_with_no_request_leaving_loopback(server, tmp_path):
    """Swagger UI as a user opens it, offline: its scripts run and draw every endpoint."""
    from browser import open_page

    page = open_page(f"{server.url}/docs", tmp_path)
    assert page.remote() == [], page.requests
    assert f"{server.url}/docs/swagger-ui-bundle.js" in page.requests and f"{server.url}/openapi.json" in page.requests
    assert 'class="opblock-summary-path"' in page.dom and "/v2/models/{name}/infer" in page.dom, page.dom[-3000:]


def test_wrong_method_and_unknown_path(server):
    r = server.client.get("/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["field"] == "method"
    r = server.client.get("/nope")
    assert r.status_code == 404 and r.json()["field"] == "path"


def test_metrics_count_requests_errors_latency_batches_and_the_model(server):
    server.predict(pixels(2).tolist())
    server.client.post("/predict", content=b"{", headers={"Content-Type": "application/json"})
    version = server.client.get("/v2/models/distillery").json()["versions"][0]
    assert server.metric("distillery_requests_total", endpoint="/predict", code="200") >= 1
    assert server.metric("distillery_requests_total", endpoint="/predict", code="400") >= 1
    assert server.metric("distillery_request_errors_total", endpoint="/predict", reason="bad_request") >= 1
    assert server.metric("distillery_request_duration_seconds_count", endpoint="/predict") >= 2
    assert server.metric("distillery_batch_size_count") >= 1
    assert server.metric("distillery_batch_size_sum") >= 2
    assert server.metric("distillery_model_info", name="distillery", version=version) == 1
    assert server.metric("distillery_ready") == 1
    r = server.client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")


def test_tritons_own_client_lists_the_repository_infers_and_reads_statistics(server, models):
    """tritonclient, not a hand-written request: the advertised extensions work."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert {"model_repository", "statistics"} <= set(client.get_server_metadata()["extensions"])
        (entry,) = client.get_model_repository_index()
        version = server.client.get("/v2/models/distillery").json()["versions"][0]
        assert entry == {"name": "distillery", "version": version, "state": "READY", "reason": ""}
        before = client.get_inference_statistics("distillery")["model_stats"][0]
        x = pixels(3, seed=5)
        tensor = triton.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        answer = client.infer("distillery", [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
        np.testing.assert_allclose(
            answer.as_numpy("probabilities"), onnx_outputs(models["image"], x)["probabilities"], rtol=1e-5, atol=1e-6
        )
        after = client.get_inference_statistics("distillery")["model_stats"][0]
        assert after["inference_count"] == before["inference_count"] + 3
        assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
        assert after["execution_count"] > before["execution_count"] and after["last_inference"] > 0
        assert client.get_inference_statistics()["model_stats"][0]["name"] == "distillery"  # /v2/models/stats
    finally:
        client.close()


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/a%2Fb/infer",
        "/v2/models/..%2F..%2Fetc/ready",
        "/v2/models/a%5Cb",
        "/v2/models/distillery/versions/1%2f2/infer",
        "/v2/repository/models/x%2Fy/load",
    ],
)
def test_a_model_name_with_a_path_separator_is_400(server, path):
    r = server.client.request("POST" if path.endswith(("infer", "load")) else "GET", path)
    assert r.status_code == 400 and r.json()["field"] == "model_name"

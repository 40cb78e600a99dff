"""Load limits and micro-batching, on a model slow enough (tens of ms a row)
for requests to pile up behind one another."""

from __future__ import annotations

import asyncio
import signal

import httpx
import numpy as np

from .serve_helpers import onnx_outputs, pixels, read_log


async def _burst(url: str, bodies: list[dict], path: str = "/predict") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=len(bodies))) as client:
        return await asyncio.gather(*(client.post(path, json=body) for body in bodies))


def burst(server, bodies: list[dict], path: str = "/predict") -> list[httpx.Response]:
    return asyncio.run(_burst(server.url, bodies, path))


def test_queue_full_gets_503_with_retry_after_and_no_request_hangs(serve, models):
    server = serve(models["slow"], max_concurrency=1, max_queue=1, max_batch=1, retry_after_s=2)
    responses = burst(server, [{"rows": pixels(1, seed=i).tolist()} for i in range(10)])
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 2 and statuses.count(503) >= 5, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert "DISTILLERY_SERVE_MAX_QUEUE" in r.json()["error"]
    assert server.metric("distillery_request_errors_total", endpoint="/predict", reason="overloaded") == statuses.count(
        503
    )
    # Overload passes: the server is ready and answers again.
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.predict(pixels(1).tolist()).status_code == 200
    # Refusals are counted, not logged (a write each would feed the overload); every answer is logged.
    server.stop(signal.SIGTERM)
    logged = read_log(server.log_dir)
    assert {row["status"] for row in logged} == {200} and len(logged) == statuses.count(200) + 1


def test_a_request_over_the_timeout_gets_504_and_the_server_goes_on(serve, models):
    server = serve(models["slow"], request_timeout_s=0.01)
    r = server.predict(pixels(1).tolist())
    assert r.status_code == 504
    assert "DISTILLERY_SERVE_REQUEST_TIMEOUT_S" in r.json()["error"]
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.metric("distillery_request_errors_total", endpoint="/predict", reason="timeout") == 1


def test_concurrent_requests_share_onnxruntime_runs_and_each_gets_its_own_answer(serve, models):
    server = serve(models["slow"], max_batch=16)
    inputs = [pixels(1 + i % 2, seed=10 + i) for i in range(6)]  # 1 or 2 rows each: 9 rows
    responses = burst(server, [{"rows": x.tolist()} for x in inputs])
    assert [r.status_code for r in responses] == [200] * 6
    for x, r in zip(inputs, responses):
        want = onnx_outputs(models["slow"], x)["probabilities"]
        got = np.array([[p["probabilities"][c] for c in ("a", "b", "c")] for p in r.json()["predictions"]])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    runs = server.metric("distillery_batch_size_count")
    assert server.metric("distillery_batch_size_sum") == 9
    assert runs < 6  # fewer onnxruntime runs than requests: some were batched together

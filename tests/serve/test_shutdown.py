"""SIGTERM: readiness turns 503 first, in-flight requests are answered, then
the server exits 0 with its prediction log flushed."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from .serve_helpers import pixels, read_log, wait_until


def test_sigterm_turns_readiness_off_drains_in_flight_requests_then_exits(serve, models):
    # One slow row at a time (~75 ms each): 16 requests are ~1.2 s of work, more than the grace.
    server = serve(models["slow"], drain_grace_s=0.6, max_batch=1, log_flush_interval_s=30)
    done: list[tuple[float, int]] = []

    def call(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/predict", json={"rows": pixels(1, seed=i).tolist()})
            done.append((time.monotonic(), r.status_code))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    # Every request has reached the server (being worked on, or answered already).
    wait_until(
        lambda: server.metric("distillery_requests_in_flight") + len(done) >= 16, message="requests did not arrive"
    )
    assert len(done) < 16
    server.proc.send_signal(signal.SIGTERM)

    ready = server.client.get("/v2/health/ready")
    turned_off = time.monotonic()
    assert ready.status_code == 503 and ready.json()["reason"].startswith("draining")
    assert server.client.get("/v2/health/live").status_code == 200  # not dead: do not restart it
    during_grace = server.predict(pixels(1, seed=99).tolist())  # a load balancer may still send some
    assert during_grace.status_code == 200

    for t in threads:
        t.join(timeout=30)
    assert [status for _, status in done] == [200] * 16
    assert sum(at > turned_off for at, _ in done) >= 3  # answered after readiness went 503
    assert server.proc.wait(timeout=30) == 0
    log = server.log()
    assert "draining" in log and "Traceback" not in log
    # The flush interval is 30 s: the rows are there because shutdown flushed them.
    assert len(read_log(server.log_dir)) == 17


def test_after_the_grace_the_server_stops_listening(serve, models):
    server = serve(models["image"], drain_grace_s=0.3)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    try:
        httpx.get(f"{server.url}/v2/health/live", timeout=2)
        raise AssertionError("still listening after shutdown")
    except httpx.ConnectError:
        pass

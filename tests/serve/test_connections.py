"""No connection is held forever and their number is capped, over raw
sockets: a silent connection is closed, trickled headers and a stalled body
get 408, an idle kept-alive connection closes, and a connection over the cap
gets 503 with Retry-After before it is read. The server goes on serving."""

from __future__ import annotations

import json
import socket
import time

import pytest

from .serve_helpers import pixels

HEADER_TIMEOUT_S, REQUEST_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS = 1.0, 1.5, 0.5, 6


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(
        models["image"],
        header_timeout_s=HEADER_TIMEOUT_S,
        request_timeout_s=REQUEST_TIMEOUT_S,
        keep_alive_s=KEEP_ALIVE_S,
        max_connections=MAX_CONNECTIONS,
    )


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a timeout here fails the test: the connection was held)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_a_silent_connection_is_closed(server):
    with _connect(server) as sock:
        assert _read_all(sock) == b""  # closed by the server, nothing said: nothing was asked


def test_headers_trickling_in_get_408(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(int(HEADER_TIMEOUT_S * 10)):  # one header byte every 0.3 s: never complete
                time.sleep(0.3)
                sock.sendall(b"X")
        except OSError:  # closed under us: what we want
            pass
        answer = _read_all(sock)
    assert _status(answer) == 408 and b"DISTILLERY_SERVE_HEADER_TIMEOUT_S" in answer


def test_a_stalled_body_gets_408_naming_the_body(server):
    body = json.dumps({"rows": pixels(1).tolist()}).encode()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        answer = _read_all(sock)
    assert _status(answer) == 408 and _body(answer)["field"] == "body"
    assert "DISTILLERY_SERVE_REQUEST_TIMEOUT_S" in _body(answer)["error"]


def test_an_idle_kept_alive_connection_closes_after_its_answer(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(sock)  # answered, then closed once idle
    assert _status(answer) == 200 and answer.count(b"HTTP/1.1") == 1


def test_connections_over_the_cap_get_503_before_they_are_read(server):
    held = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # accepted by the server
        with _connect(server) as extra:
            answer = _read_all(extra)  # nothing sent: refused on accept
        assert _status(answer) == 503 and b"retry-after: " in answer.lower()
        assert b"DISTILLERY_SERVE_MAX_CONNECTIONS" in answer
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert server.predict(pixels(1).tolist()).status_code == 200  # room again


def test_the_server_is_still_live_and_answered_no_5xx_but_the_cap(server):
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.proc.poll() is None

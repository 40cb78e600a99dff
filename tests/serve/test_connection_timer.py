"""The guard keeps one timer per connection for both its deadlines
(deploy.connections), yet each counts from its own moment: a later request on
a kept-alive connection gets its whole DISTILLERY_SERVE_HEADER_TIMEOUT_S from
its first byte, then 408; a connection in use is not closed for idleness,
and one idle for DISTILLERY_SERVE_KEEP_ALIVE_S is. Neither deadline waits for
the other's, whichever limit is the longer. tests/serve/test_connections.py
covers the first request, and an idle connection after a single answer."""

from __future__ import annotations

import socket
import time

import pytest

HEADER_TIMEOUT_S, KEEP_ALIVE_S = 1.0, 10.0
SHORT_KEEP_ALIVE_S, LONG_HEADER_TIMEOUT_S = 0.5, 3.0


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"], header_timeout_s=HEADER_TIMEOUT_S, keep_alive_s=KEEP_ALIVE_S)


@pytest.fixture(scope="module")
def short_keep_alive(serve_module, models):
    return serve_module(models["image"], header_timeout_s=LONG_HEADER_TIMEOUT_S, keep_alive_s=SHORT_KEEP_ALIVE_S)


def _answer(sock: socket.socket) -> bytes:
    """One whole answer to a GET on a kept-alive connection."""

    def more() -> bytes:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += more()
    return head


def _closed_after(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes, and how long that took."""
    began, chunks = time.monotonic(), []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks), time.monotonic() - began


def test_a_later_request_on_a_kept_alive_connection_gets_its_own_header_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S * 0.6)  # past half the first request's deadline, well within keep-alive
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # a second request, headers never finished
        answer, elapsed = _closed_after(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"DISTILLERY_SERVE_HEADER_TIMEOUT_S" in answer
    # Its own deadline, not the first request's (which fell 0.4 s after it began).
    assert elapsed >= HEADER_TIMEOUT_S - 0.05


def test_a_connection_in_use_stays_open_past_the_keep_alive_and_closes_once_idle(short_keep_alive):
    """Requests a fraction of KEEP_ALIVE_S apart, for several times KEEP_ALIVE_S,
    on one connection: each is answered on it (the timer set after the first
    answer finds the connection busy or freshly idle); then, idle, it closes."""
    with socket.create_connection(("127.0.0.1", short_keep_alive.port), timeout=15) as sock:
        began = time.monotonic()
        answered = 0
        while time.monotonic() - began < SHORT_KEEP_ALIVE_S * 4:
            if answered:
                time.sleep(SHORT_KEEP_ALIVE_S / 5)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(sock).startswith(b"HTTP/1.1 200")  # not closed under us
            answered += 1
        idle_from = time.monotonic()  # the last answer is in: idle from here
        assert answered >= 5
        assert sock.recv(65536) == b""  # closed by the server once idle
        idle = time.monotonic() - idle_from
    assert idle >= SHORT_KEEP_ALIVE_S - 0.05


def test_a_header_deadline_is_kept_though_the_keep_alive_is_longer(server):
    """The connection went idle (keep-alive 10 s) past its first header deadline; a
    request begun then still gets 408 HEADER_TIMEOUT_S after it began, not when the
    keep-alive would have run out."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S * 1.5)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        answer, elapsed = _closed_after(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert HEADER_TIMEOUT_S - 0.05 <= elapsed < HEADER_TIMEOUT_S + 1.5  # not KEEP_ALIVE_S


def test_an_idle_connection_closes_at_its_keep_alive_though_the_header_limit_is_longer(short_keep_alive):
    with socket.create_connection(("127.0.0.1", short_keep_alive.port), timeout=15) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        answer, idle = _closed_after(sock)
    assert answer == b""
    assert SHORT_KEEP_ALIVE_S - 0.05 <= idle < SHORT_KEEP_ALIVE_S + 1.5  # not LONG_HEADER_TIMEOUT_S


def test_bytes_that_begin_no_request_do_not_hold_an_idle_connection(server):
    """A CRLF after an answer is skipped by the parser and begins no request; it
    ends the idleness, and the header deadline, counted from it, closes the
    connection (silently: no request began)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"\r\n")
        answer, elapsed = _closed_after(sock)
    assert answer == b""
    assert HEADER_TIMEOUT_S - 0.05 <= elapsed < HEADER_TIMEOUT_S + 1.5  # closed, and not at the keep-alive


def test_the_servers_go_on(server, short_keep_alive):
    for s in (server, short_keep_alive):
        assert s.client.get("/v2/health/ready").status_code == 200

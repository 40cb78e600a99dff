"""An answer's head and body leave in one write (deploy.connections
_HeadWithBody): what a client sees is unchanged, including where the head
must not wait for a body (HEAD) or an interim 100 Continue comes first, and
answers to pipelined requests stay in order."""

from __future__ import annotations

import json
import socket

import pytest

from deploy.connections import _HeadWithBody

from .serve_helpers import pixels


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_the_head_waits_for_the_body_then_writes_pass_through():
    real = _Transport()
    held = _HeadWithBody(real)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert real.writes == []
    held.write(b"first")
    held.write(b"second")
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nfirst", b"second"]
    held.close()
    assert real.closed and real.writes[-1] == b"second"  # nothing held, nothing more written
    assert held.get_extra_info("peername") == "info:peername" and held.is_closing()


def test_a_head_without_a_body_goes_out_at_close():
    real = _Transport()
    held = _HeadWithBody(real)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    held.close()  # the application failed after http.response.start
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n"] and real.closed


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"])


def _body() -> bytes:
    return json.dumps({"rows": pixels(1).reshape(1, -1).tolist()}).encode()


def _post(body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body)


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_head_request_is_answered_without_a_body(server):
    """On a kept-alive connection: nothing (no body, no close) would push out a held head."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            chunk = sock.recv(65536)  # times out if the head is held
            assert chunk, "the server closed the connection"
            answer += chunk
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        after = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 ") and answer.count(b"HTTP/1.1 ") == 1  # the head alone
    assert after.startswith(b"HTTP/1.1 200")  # no body of the HEAD answer came between


def test_expect_100_continue_gets_its_interim_answer_first(server):
    body = _body()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_post(body, b"Expect: 100-continue\r\nConnection: close\r\n"))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # sent before the body is read
        sock.sendall(body)
        answer = interim.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n") + _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b'"predictions"' in answer


def test_pipelined_requests_are_answered_whole_and_in_order(server):
    body = _body()
    requests = (_post(body) + body) * 3 + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(requests)
        answer = _read_until_closed(sock)
    heads = answer.split(b"HTTP/1.1 ")[1:]
    assert [h[:3] for h in heads] == [b"200"] * 4
    assert [b'"predictions"' in h for h in heads] == [True, True, True, False]  # the three answers, then live

"""uvicorn's httptools protocol with the limits a server facing the open
network needs, which uvicorn lacks:

- a cap on open connections: one over `max_connections` is answered 503 with
  Retry-After as soon as it is accepted, before a byte of it is parsed, so
  refusing costs almost nothing when the server is overloaded. The server
  then stops sending and drops what the client sends until the client closes
  (at most LINGER_S): closed at once, with the client's request unread, the
  connection would be reset, and a client that sent its request at once (as
  clients do) would often get the reset instead of the answer;
- a header deadline: a request's headers must arrive within
  `header_timeout_s` of its first byte (or of the connection, for the first
  request), or the client gets 408 and the connection closes. A connection
  that never sends anything is closed after the same time. uvicorn's own
  keep-alive timer starts only after a response and stops at the first byte,
  so a trickle of header bytes, or silence, held a connection forever.

Idle keep-alive connections between requests close after uvicorn's
`timeout_keep_alive` (DISTILLERY_SERVE_KEEP_ALIVE_S). A slow body is the
application's: deploy.app answers 408 when the body is not in within the
request timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deploy.protocol import error_body

LINGER_S = 1.0  # longest a refused connection waits for its client to close, reading nothing


def _response(status: bytes, message: str, extra: bytes = b"") -> bytes:
    """A whole answer, made once: sending it costs one write."""
    body = error_body(message, None)
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Discard:
    """The parser of a refused connection: its request is read off the socket
    (so that closing does not reset it) and dropped."""

    def feed_data(self, data: bytes) -> None:
        pass


class _HeadWithBody:
    """A response's transport, as its request's cycle sees it: the status line
    and headers (uvicorn writes them on http.response.start) are held and written
    with the first piece of the body, in one write. Written apart, every answer
    cost a second send() system call and a second TCP segment, which the client
    reads separately too: about 13% of the server's CPU time per request at c16
    with bench_serve's small model (99 against 114 us, interleaved runs).
    Used only where that first write is the head and a body write follows: not
    for HEAD (no body is written) nor after `Expect: 100-continue` (the interim
    100 is written first)."""

    __slots__ = ("transport", "head")

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self.head: bytes | None = None  # None: nothing written yet; b"": the head is out

    def write(self, data: bytes) -> None:
        head = self.head
        if head is None:
            self.head = data
        elif head:
            self.head = b""
            self.transport.write(head + data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.head:  # the application failed between head and body: the head goes out, as it would have
            self.transport.write(self.head)
            self.head = b""
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever else of the transport a cycle asks for
        return getattr(self.transport, name)


def guarded_protocol(max_connections: int, header_timeout_s: float, retry_after_s: int) -> type:
    over_capacity = _response(
        b"503 Service Unavailable",
        f"too many open connections (DISTILLERY_SERVE_MAX_CONNECTIONS={max_connections}); "
        f"retry after {retry_after_s} s",
        b"retry-after: %d\r\n" % retry_after_s,
    )
    too_slow = _response(
        b"408 Request Timeout",
        f"the request headers did not arrive within {header_timeout_s} s (DISTILLERY_SERVE_HEADER_TIMEOUT_S)",
    )

    class GuardedHttpProtocol(HttpToolsProtocol):
        # Every request pays for what is here: three hooks, and no timer of its own.
        # One timer per connection keeps both deadlines, the header deadline and
        # uvicorn's keep-alive: a request notes when its headers began and when they
        # are in, an answer when the connection went idle, and the timer, when it
        # fires, checks the connection as it is then and is set again for what is
        # due next. (uvicorn sets a keep-alive timer after every answer and cancels
        # it at the next request; that, and a header timer per request, cost the
        # event loop more than these checks.)
        # The timer is never set further ahead than the shorter of the two limits
        # (`_step`): a deadline that begins later ends no sooner than that, so the
        # timer, already set, fires before it, however the connection moved between
        # idle and awaiting headers meanwhile.
        _timer: asyncio.TimerHandle | None = None
        _step: float = header_timeout_s
        _headers_since: float | None = None  # first byte of the request whose headers are awaited
        _idle_since: float | None = None  # the last answer, while no new request has begun
        _request_started = False
        _refused = False

        def connection_made(self, transport: Any) -> None:  # noqa: ANN401 - asyncio's signature
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refused = True
                self.parser = _Discard()  # type: ignore[assignment]  # its request is read and dropped, not parsed
                transport.write(over_capacity)
                if transport.can_write_eof():
                    transport.write_eof()
                self._timer = self.loop.call_later(min(LINGER_S, header_timeout_s), transport.close)
                return
            self._step = min(header_timeout_s, self.timeout_keep_alive)
            self._headers_since = self.loop.time()  # the first request's deadline runs from the connection
            self._arm()

        def eof_received(self) -> None:
            if self._refused:
                self.transport.close()

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            if self._headers_since is not None:
                remaining = self._headers_since + header_timeout_s - now
                if remaining <= 0:
                    if self._request_started:  # part of a request came: say why it is refused
                        self.transport.write(too_slow)
                    self.transport.close()
                    return
            elif self._idle_since is not None:
                remaining = self._idle_since + self.timeout_keep_alive - now
                if remaining <= 0:
                    self.timeout_keep_alive_handler()  # uvicorn's: close the idle connection
                    return
            else:  # a request is being answered: its answer notes when the connection goes idle
                return
            self._timer = self.loop.call_later(min(remaining, self._step), self._check)

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(self._step, self._check)

        def on_message_begin(self) -> None:
            self._request_started = True
            if self._headers_since is None:  # a pipelined request, or one sent before the last answer
                self._headers_since = self.loop.time()
                self._arm()
            HttpToolsProtocol.on_message_begin(self)  # not super(): this runs once a request

        def on_headers_complete(self) -> None:
            self._headers_since = None
            self._request_started = False
            before = self.cycle
            HttpToolsProtocol.on_headers_complete(self)
            cycle = self.cycle
            if cycle is not before and not self.expect_100_continue and self.scope["method"] != "HEAD":
                cycle.transport = _HeadWithBody(self.transport)  # type: ignore[assignment]  # write, close, is_closing

        def _unset_keepalive_if_required(self) -> None:
            # uvicorn calls this when data comes (and when the connection is lost).
            # Bytes after an answer start the next request's header deadline, even
            # bytes that begin no request (a CRLF between requests, which the parser
            # skips): without this, one "\r\n" held an idle connection open forever.
            if self._idle_since is not None:
                self._idle_since = None
                if self._headers_since is None:
                    self._headers_since = self.loop.time()
                    self._arm()

        def on_response_complete(self) -> None:
            # uvicorn 0.54's on_response_complete, with the keep-alive timer it set here
            # replaced by a note for the connection's one timer.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_since = self.loop.time()
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if self._timer is not None:  # after uvicorn's, whose _unset_keepalive_if_required may set it
                self._timer.cancel()
                self._timer = None

    return GuardedHttpProtocol

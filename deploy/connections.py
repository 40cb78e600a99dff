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
        _header_timer: asyncio.TimerHandle | None = None
        _request_started = False
        _refused = False

        def connection_made(self, transport: Any) -> None:  # noqa: ANN401 - asyncio's signature
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refused = True
                transport.write(over_capacity)
                if transport.can_write_eof():
                    transport.write_eof()
                self._header_timer = self.loop.call_later(min(LINGER_S, header_timeout_s), transport.close)
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._refused:  # a refused connection's request is dropped unread
                super().data_received(data)

        def eof_received(self) -> None:
            if self._refused:
                self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                if self._request_started:  # part of a request came: say why it is refused
                    self.transport.write(too_slow)
                self.transport.close()

        def on_message_begin(self) -> None:
            self._request_started = True
            if self._header_timer is None:  # a later request on a kept-alive connection
                self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm()
            self._request_started = False
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpProtocol

"""What a connection may hold before it has sent a request: the header timeout and the connection cap.

uvicorn's httptools protocol arms no timer until a first response has gone (its keep-alive timeout), so a
client that connects and sends nothing, or half a header line, holds its socket and its memory forever
(slowloris); nor does it bound the number of connections (`limit_concurrency` answers 503 only once the
headers are complete, which a slowloris client never sends). This subclass adds:

- `header_timeout_s`: from the connection's start (and from the first byte of each later request on a
  kept-alive connection) to the end of its headers; past it, 408 and close;
- a cap on header bytes (431 and close), since httptools buffers headers without bound;
- `max_connections`: a connection beyond it gets 503 and is closed at once, before any byte is read;
- a response sent before the request's body has fully arrived (401, 413 ...) ends the connection, and says so
  (`connection: close`): otherwise a client could keep it forever by dripping the unread rest (each byte
  restarts keep-alive). It is a lingering
  close, as nginx does: our side is shut for writing and the rest is read and dropped for `LINGER_S`, since
  closing with unread bytes would send a TCP reset that can destroy the response before the client reads it.

The body's own timeout is server/protection/limits.py's BodyLimitMiddleware (it reads the body for the app).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("llamaserve.connections")

MAX_HEADER_BYTES = 64 * 1024
LINGER_S = 2.0


def _plain_response(status: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Set `header_timeout_s` and `max_connections` on a subclass (`guarded_protocol`)."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: TimerHandle | None = None
        self._header_bytes = 0
        self._refused = False
        self._linger_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refused = True
            log.warning("connection refused: %d connections open, the limit is %d",
                        len(self.connections) - 1, self.max_connections)
            transport.write(_plain_response("503 Service Unavailable", "too many open connections; retry shortly"))
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._linger_timer is not None:
            return  # refused, or the rest of a body already answered: dropped
        super().data_received(data)
        # Counted after parsing: a chunk that completes the headers may carry a large body behind them.
        if self._header_timer is not None and self.parser is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._cancel_header_timer()
                self.transport.write(_plain_response("431 Request Header Fields Too Large", "request headers too large"))
                self._linger()  # the client is still sending: a plain close would reset the connection

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a later request on a kept-alive connection: its first byte
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        send = cycle.send

        async def send_saying_close(message: dict) -> None:
            # A response that starts before its request's body is in ends the connection (on_response_complete):
            # it says so, or a client would send its next request down a connection about to close.
            if message["type"] == "http.response.start" and cycle.more_body:
                keep_alive = cycle.keep_alive
                await send({**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]})
                cycle.keep_alive = keep_alive  # closed by our lingering close, not uvicorn's plain one
            else:
                await send(message)

        cycle.send = send_saying_close

    def on_response_complete(self) -> None:
        if not self.pipeline and self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._linger()  # answered before its body was in
            return
        super().on_response_complete()

    def _linger(self) -> None:
        self._cancel_header_timer()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the response, then EOF

    def eof_received(self) -> bool | None:
        if self._linger_timer is not None:
            return False  # the client is done too: close now
        return super().eof_received()

    def _arm_header_timer(self) -> None:
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # Half a pipelined request behind one still answering: close once that response is done.
            self.cycle.keep_alive = False
            return
        self._close_with("408 Request Timeout", f"request headers not received within {self.header_timeout_s:g} s")

    def _close_with(self, status: str, message: str) -> None:
        self._cancel_header_timer()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_plain_response(status, message))
        self.transport.close()


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with this server's limits."""
    return type(
        "LlamaserveHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )

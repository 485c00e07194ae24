"""The one place that frames server-sent events: `data: <json>\\n\\n`, ending with `data: [DONE]\\n\\n`.

Frames are pre-rendered bytes, which sse-starlette passes through untouched; sse-starlette still owns the
response's disconnect watching, keep-alive pings and shutdown handling.

This is the per-token path, so it is kept lean: a stream's most common frame (one choice's new text) is a
`FrameTemplate` rendered once per stream and filled per token, and sending a frame awaits the ASGI `send` directly
unless a per-send timeout was asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette import EventSourceResponse
from starlette.types import Message, Send

DONE = b"data: [DONE]\n\n"
# Stands in for the text in a template's payload; no generated text renders to the same JSON string.
SLOT = "\x00llamaserve-slot\x00"
_SLOT_JSON = orjson.dumps(SLOT)


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class FrameTemplate:
    """A frame pre-rendered around one string: `fill(text)` is byte for byte `frame(payload with SLOT = text)`."""

    __slots__ = ("_prefix", "_suffix")

    def __init__(self, payload: dict[str, Any]):
        parts = frame(payload).split(_SLOT_JSON)
        if len(parts) != 2:
            raise ValueError("a frame template's payload holds SLOT exactly once")
        self._prefix, self._suffix = parts

    def fill(self, text: str) -> bytes:
        return self._prefix + orjson.dumps(text) + self._suffix


def event(kind: str, payload: dict[str, Any]) -> bytes:
    """A named event (the Responses API's): `payload` holds its `type` and `sequence_number`."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class EventTemplate:
    """A named event pre-rendered around one string and its sequence number, the payload's last field:
    `fill(text, n)` is byte for byte `event(kind, payload with SLOT = text and sequence_number = n)`."""

    __slots__ = ("_prefix", "_middle")
    _TAIL = b"0}\n\n"

    def __init__(self, kind: str, payload: dict[str, Any]):
        parts = event(kind, {**payload, "sequence_number": 0}).split(_SLOT_JSON)
        if len(parts) != 2 or not parts[1].endswith(self._TAIL) or "sequence_number" in payload:
            raise ValueError("an event template's payload holds SLOT exactly once, and no sequence_number")
        self._prefix, self._middle = parts[0], parts[1][: -len(self._TAIL)]

    def fill(self, text: str, sequence_number: int) -> bytes:
        return self._prefix + orjson.dumps(text) + self._middle + str(sequence_number).encode() + b"}\n\n"


class _EventStream(EventSourceResponse):
    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette wraps every send in a cancel scope, even without a timeout: a cost paid per token.
        if self.send_timeout is None:
            try:
                await send(message)
            except BaseException:
                # As sse-starlette's own does: a send that never returned (a client that stopped reading, its
                # stream abandoned by the deadline) leaves the transport unusable, and sse-starlette (>= 3.7)
                # would otherwise try to end the response with one more send, which waits on that client for good.
                self._send_interrupted = True
                raise
        else:
            await super()._send_with_timeout(send, message)


def event_stream(frames: AsyncIterator[bytes], headers: dict[str, str] | None = None, **options: Any) -> EventSourceResponse:
    return _EventStream(frames, headers=headers, sep="\n", **options)


def event_stream_options(shutdown_grace_s: float) -> dict[str, Any]:
    """sse-starlette's options for this server's event streams (`event_stream(frames, **options)`).

    sse-starlette cancels streams as soon as uvicorn starts to exit; the drain ends them itself at
    shutdown_grace_s (error event + [DONE]), so sse-starlette's own cut only backs that up."""
    return {"shutdown_grace_period": shutdown_grace_s + 0.5}

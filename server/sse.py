"""The one place that frames server-sent events: `data: <json>\\n\\n`, ending with `data: [DONE]\\n\\n`.

Frames are pre-rendered bytes, which sse-starlette passes through untouched; sse-starlette still owns the
response's disconnect watching, keep-alive pings and shutdown handling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette import EventSourceResponse

DONE = b"data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event_stream(frames: AsyncIterator[bytes], headers: dict[str, str] | None = None, **options: Any) -> EventSourceResponse:
    return EventSourceResponse(frames, headers=headers, sep="\n", **options)

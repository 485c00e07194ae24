"""Deadlines: a generation request past `request_timeout_s`, or expired early by a drain or the engine's death,
is cancelled (which aborts its engine requests); a stream ends with an error event and [DONE] instead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from server import sse
from server.errors import APIError, error_body

T = TypeVar("T")
log = logging.getLogger("llamaserve.deadlines")

_EXPIRED = {
    "timeout": (504, "timeout"),
    "shutdown": (503, "shutting_down"),
    "engine_dead": (503, "engine_unavailable"),
}


class Deadline:
    """One admitted generation request's deadline, and the way to end the request early."""

    def __init__(self, at: float, timeout_s: float, stalled_send_grace_s: float):
        self.at = at  # the event loop's time when it passes
        # How long the stream may sit in one send past its deadline before it is abandoned: a client that stops
        # reading would otherwise hold its slot for as long as it keeps the connection open.
        self._grace_s = stalled_send_grace_s
        self.reason = "timeout"
        self._timeout_s = timeout_s
        self._timeout: asyncio.Timeout | None = None
        # A stream's one deadline timer (not a timeout per frame: that cost showed in the per-token CPU).
        self._timer: asyncio.TimerHandle | None = None
        self._passed = False
        self._stream_task: asyncio.Task | None = None
        self._waiting = False  # the stream task is waiting for the engine's next frame
        self._cut = False
        self._abandon_timer: asyncio.TimerHandle | None = None

    def expire(self, reason: str) -> None:
        self.reason = reason
        self.at = asyncio.get_running_loop().time()
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(self.at)
        if self._timer is not None:
            self._timer.cancel()
            self._on_deadline()

    def error(self) -> APIError:
        status, code = _EXPIRED[self.reason]
        message = {
            "timeout": f"the request ran longer than request_timeout_s ({self._timeout_s:g} s) and was cancelled",
            "shutdown": "the server is shutting down; the request was cancelled",
            "engine_dead": "the engine stopped; the request was cancelled",
        }[self.reason]
        headers = None if status == 504 else {"Retry-After": "5"}
        return APIError(status, message, code=code, headers=headers)

    async def within(self, work: Awaitable[T]) -> T:
        """Awaits `work` until the deadline; past it, `work` is cancelled and the deadline's error raised."""
        try:
            async with asyncio.timeout_at(self.at) as self._timeout:
                return await work
        except TimeoutError:
            if self._timeout is not None and self._timeout.expired():
                raise self.error() from None
            raise
        finally:
            self._timeout = None

    def _on_deadline(self) -> None:
        self._timer = None
        self._passed = True
        if self._waiting and not self._cut:
            self._cut = True
            self._stream_task.cancel()
        if self._stream_task is not None and self._abandon_timer is None:
            self._abandon_timer = asyncio.get_running_loop().call_later(self._grace_s, self._abandon)

    def _abandon(self) -> None:
        """The stream outlived its deadline by the grace period: its sends are stuck on a client that does not
        read. Cancelling the sending task ends the response (sse-starlette's task group cancels the rest, uvicorn
        closes the connection), which frees the slot and, as the frame generators close, the engine request."""
        self._abandon_timer = None
        if self._stream_task is not None:
            log.warning("a stream's client stopped reading; ended %g s after its deadline", self._grace_s)
            self._stream_task.cancel()

    async def stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Passes frames on until the deadline; past it, the stream ends with an error event and [DONE].

        Only the wait for the next frame is cut short (never a yield), so the cancellation lands in the engine
        stream, which aborts its engine request.
        """
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._stream_task = task
        self._timer = asyncio.get_running_loop().call_at(self.at, self._on_deadline)
        try:
            while not self._passed:
                self._waiting = True
                try:
                    frame = await anext(frames)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not self._cut or task.uncancel() > cancelling:
                        raise  # cancelled by someone else too (e.g. the client went away)
                    break
                finally:
                    self._waiting = False
                if self._cut:
                    task.uncancel()  # the cancellation missed: the frame came first
                    break
                yield frame
            yield sse.frame(error_body(self.error()))
            yield sse.DONE
        finally:
            self._stream_task = None
            for timer in (self._timer, self._abandon_timer):
                if timer is not None:
                    timer.cancel()
            self._timer = self._abandon_timer = None
            await frames.aclose()

"""A stream's deadline (server.protection.deadlines.Deadline.stream) on scripted frame sources, without a server."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from server.protection.deadlines import Deadline


def _run(coro):
    return asyncio.run(coro)


class Source:
    """Frames at scripted delays; records how it ended."""

    def __init__(self, delays: list[float]):
        self.delays = delays
        self.cancelled = False
        self.closed = False

    async def frames(self):
        try:
            for i, d in enumerate(self.delays):
                await asyncio.sleep(d)
                yield f"data: {i}\n\n".encode()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


async def _collect(deadline: Deadline, source: Source, per_frame_s: float = 0.0) -> list[bytes]:
    out = []
    async for frame in deadline.stream(source.frames()):
        out.append(frame)
        if per_frame_s:
            await asyncio.sleep(per_frame_s)  # a slow send: a deadline passing here must not cancel it
    return out


def _deadline(in_s: float, grace_s: float = 5.0) -> Deadline:
    return Deadline(asyncio.get_running_loop().time() + in_s, in_s, grace_s)


def _error(frame: bytes) -> dict:
    return orjson.loads(frame.removeprefix(b"data: "))


def test_frames_pass_through_before_the_deadline():
    async def main():
        src = Source([0, 0, 0])
        frames = await _collect(_deadline(5), src)
        assert frames == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        assert src.closed and not src.cancelled

    _run(main())


def test_a_deadline_during_a_wait_cancels_the_source_and_ends_with_an_error_then_done():
    async def main():
        src = Source([0, 10])
        frames = await asyncio.wait_for(_collect(_deadline(0.2), src), 5)
        assert frames[0] == b"data: 0\n\n"
        assert _error(frames[1])["error"]["code"] == "timeout" and _error(frames[1])["status"] == 504
        assert frames[2] == b"data: [DONE]\n\n" and len(frames) == 3
        assert src.cancelled and src.closed
        assert asyncio.current_task().cancelling() == 0  # the cut left no cancellation pending

    _run(main())


def test_a_deadline_during_a_send_lets_the_send_finish_and_ends_at_the_next_frame():
    async def main():
        src = Source([0, 0, 0])
        frames = await _collect(_deadline(0.1), src, per_frame_s=0.3)
        assert frames[0] == b"data: 0\n\n"
        assert _error(frames[1])["error"]["code"] == "timeout"
        assert frames[2] == b"data: [DONE]\n\n" and len(frames) == 3
        assert src.closed and not src.cancelled  # closed between frames, never cut mid-wait

    _run(main())


def test_expire_ends_a_waiting_stream_at_once_with_its_reason():
    async def main():
        deadline, src = _deadline(60), Source([0, 30])
        task = asyncio.create_task(_collect(deadline, src))
        await asyncio.sleep(0.1)
        deadline.expire("shutdown")
        frames = await asyncio.wait_for(task, 5)
        assert _error(frames[1])["error"]["code"] == "shutting_down" and _error(frames[1])["status"] == 503
        assert frames[-1] == b"data: [DONE]\n\n" and src.cancelled

    _run(main())


def test_a_cancellation_from_elsewhere_is_not_turned_into_an_error_event():
    async def main():
        src = Source([0, 30])
        task = asyncio.create_task(_collect(_deadline(60), src))
        await asyncio.sleep(0.1)
        task.cancel()  # what a client disconnect does to the sending task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert src.cancelled

    _run(main())


def test_no_timer_outlives_the_stream():
    async def main():
        deadline, src = _deadline(0.2), Source([0])
        await _collect(deadline, src)
        await asyncio.sleep(0.3)  # past the deadline, nothing fires into a finished stream
        assert deadline._timer is None and not deadline._passed

    _run(main())


def test_a_stream_stuck_in_a_send_past_its_deadline_is_abandoned_after_the_grace():
    async def main():
        src = Source([0, 0, 0])
        deadline = _deadline(0.1, grace_s=0.2)

        async def consume():
            async for _ in deadline.stream(src.frames()):
                await asyncio.sleep(3600)  # a send to a client that never reads

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        assert not task.done()  # past the deadline, but within the grace
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        assert deadline._abandon_timer is None

    _run(main())


def test_a_stream_that_ends_in_time_after_its_deadline_is_not_abandoned():
    async def main():
        src = Source([0, 10])
        deadline = _deadline(0.1, grace_s=0.3)
        frames = await _collect(deadline, src)
        assert frames[-1] == b"data: [DONE]\n\n"
        assert deadline._abandon_timer is None and deadline._stream_task is None
        await asyncio.sleep(0.5)  # nothing fires later

    _run(main())


def test_an_abandoned_response_ends_without_another_send_to_the_stalled_client():
    """The whole response (server/sse.py on sse-starlette): once the deadline abandons a send that never returns,
    the ASGI call ends; nothing more is sent to that client, which would wait on it for good."""
    from server import sse

    async def main():
        sent: list[dict] = []
        stuck = asyncio.Event()

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and len(sent) >= 3:
                stuck.set()
                await asyncio.sleep(3600)  # the client stopped reading: the send never returns

        async def receive():
            await asyncio.sleep(3600)  # the connection stays open
            return {"type": "http.disconnect"}

        deadline = _deadline(0.2, grace_s=0.2)
        response = sse.event_stream(deadline.stream(Source([0] * 100).frames()))
        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
        await asyncio.wait_for(response(scope, receive, send), 3)
        assert stuck.is_set()
        assert len(sent) == 3  # the start and two frames; no closing body after the stuck one

    _run(main())

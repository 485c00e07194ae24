"""The drain's logic in-process (server/protection/lifecycle.py, server/protection/limits.py Admission.close), on a scripted engine whose
requests never finish by themselves: deterministic whatever the machine's speed.

The real-engine drain (SIGTERM, exit code and time) is in tests/server/test_reliability.py."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from engine.outputs import ChoiceDelta, PromptInfo, Step
from server.app import create_app
from server.errors import APIError
from server.protection.limits import Admission
from server.settings import Settings
from server.state import state_of
from tests.probes import sse_events
from tests.scripted_engine import ScriptedEngine

GRACE_S = 0.5
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


class EndlessEngine(ScriptedEngine):
    """Generates one token every 10 ms until cancelled; records the requests it was asked to drop."""

    def __init__(self, settings: Settings):
        super().__init__(max_model_len=4096)
        self.cancelled: list[str] = []
        self.stopped = False

    def num_unfinished_requests(self) -> int:
        return len(self.started) - len(self.cancelled)

    async def stream(self, prompt_ids, plan, request_id):
        self.started.append(request_id)
        n = 0
        try:
            while True:
                await asyncio.sleep(0.01)
                n += 1
                yield Step([ChoiceDelta(0, "x", [5], None)], PromptInfo(prompt_ids), n)
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise

    async def complete(self, prompt_ids, plan, request_id):
        async for _ in self.stream(prompt_ids, plan, request_id):
            pass

    def shutdown(self) -> None:
        self.stopped = True


@pytest.fixture()
def settings(clean_env):
    return Settings(shutdown_grace_s=GRACE_S, max_concurrent_requests=2, max_queued_requests=4,
                    rate_limit_rpm=0, rate_limit_tpm=0)


def test_drain_refuses_queued_and_new_requests_at_once_and_cuts_running_ones_at_the_grace(settings):
    async def main():
        app = create_app(settings, engine_factory=EndlessEngine)
        state = state_of(app)
        async with app.router.lifespan_context(app):
            while state.engine is None:
                await asyncio.sleep(0.01)
            engine = state.engine
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                         timeout=10) as c:
                stream = asyncio.create_task(c.post("/v1/chat/completions", json={**CHAT, "stream": True}))
                full = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
                while len(engine.started) < 2:
                    await asyncio.sleep(0.01)
                queued = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
                while state.limits.admission.waiting < 1:
                    await asyncio.sleep(0.01)

                began = time.monotonic()
                state.lifecycle.request_drain()
                refused = await queued
                refused_after = time.monotonic() - began
                late = await c.post("/v1/chat/completions", json=CHAT)
                ready = await c.get("/ready")
                cut_full = await full
                cut_full_after = time.monotonic() - began
                cut_stream = await stream
                cut_stream_after = time.monotonic() - began
        return engine, refused, refused_after, late, ready, cut_full, cut_full_after, cut_stream, cut_stream_after

    engine, refused, refused_after, late, ready, full, full_after, stream, stream_after = asyncio.run(
        asyncio.wait_for(main(), 30))
    # Queued: refused at once, never started (the engine saw only the two running requests).
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert "not started" in refused.json()["error"]["message"] and refused.headers["retry-after"]
    assert refused_after < GRACE_S / 2
    assert late.status_code == 503 and ready.status_code == 503
    assert len(engine.started) == 2
    # Running: cut at the grace, their engine requests cancelled (which aborts them in vLLM).
    assert full.status_code == 503 and full.json()["error"]["code"] == "shutting_down"
    events, done = sse_events(stream.text)
    assert stream.status_code == 200 and done and events[-1]["error"]["code"] == "shutting_down"
    assert events[0]["choices"] and len(events) > 2
    assert GRACE_S - 0.05 < full_after < GRACE_S + 0.5 and GRACE_S - 0.05 < stream_after < GRACE_S + 0.5
    assert sorted(engine.cancelled) == sorted(engine.started)
    assert engine.stopped


def test_a_closed_admission_refuses_waiters_and_newcomers_and_keeps_its_count():
    def shutting_down() -> APIError:
        return APIError(503, "closed", code="shutting_down")

    async def main():
        adm = Admission(limit=1, queue_limit=4)
        await adm.acquire()
        waiters = [asyncio.create_task(adm.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        assert adm.waiting == 3
        assert adm.close(shutting_down) == 3
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, APIError) and r.code == "shutting_down" for r in results)
        assert len({id(r) for r in results}) == 3  # one error each: an exception is not shared between tasks
        with pytest.raises(APIError):
            await adm.acquire()
        assert adm.running == 1 and adm.waiting == 0
        adm.release()  # the one running finishes: no waiter takes its slot
        assert adm.running == 0

    asyncio.run(main())

"""The warm-up before ready (setting `warm_up`, server/app.py `_load`): the engine generates one token with its
logprob before the server turns ready, so the first client asking for logprobs, best_of or beam search does not
wait for the kernel vLLM compiles then. In process, on scripted engines; the real engine's warm-up:
tests/server/test_warm_up.py."""

from __future__ import annotations

import asyncio

import httpx

from server.app import _load, create_app
from server.protection.lifecycle import MODEL_LOAD_EXIT_CODE
from server.state import ServerState
from tests.scripted_engine import InProcess, ScriptedEngine, settings


class HeldWarmUp(ScriptedEngine):
    """A warm-up that lasts until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def warm_up(self) -> None:
        self.warm_ups += 1
        await self.release.wait()


def test_the_server_is_not_ready_until_the_warm_up_is_done(clean_env):
    asyncio.run(_not_ready_while_warming_up())


async def _not_ready_while_warming_up() -> None:
    engine = HeldWarmUp()
    app = create_app(settings(), engine_factory=lambda _: engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            async with asyncio.timeout(10):  # without a warm-up, none starts
                while not engine.warm_ups:
                    await asyncio.sleep(0.01)
            assert (await client.get("/ready")).status_code == 503
            body = {"model": "scripted", "prompt": "hi", "max_tokens": 2}
            assert (await client.post("/v1/completions", json=body)).status_code == 503
            engine.release.set()
            async with asyncio.timeout(10):
                while (await client.get("/ready")).status_code != 200:
                    await asyncio.sleep(0.01)
            assert (await client.post("/v1/completions", json=body)).status_code == 200
    assert engine.warm_ups == 1


def test_warm_up_off_skips_it(clean_env):
    async def start() -> None:
        async with InProcess(engine, settings(warm_up=False)) as client:
            assert (await client.get("/ready")).status_code == 200

    engine = ScriptedEngine()
    asyncio.run(start())
    assert engine.warm_ups == 0


class FailingWarmUp(ScriptedEngine):
    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    async def warm_up(self) -> None:
        raise RuntimeError("the engine could not generate")

    def shutdown(self) -> None:
        self.stopped = True


def test_a_failed_warm_up_fails_the_start_and_stops_the_engine(clean_env):
    engine = FailingWarmUp()
    state = ServerState(settings=settings())
    exits: list[int] = []
    clean_env.setattr(state.lifecycle, "exit_now", exits.append)  # the real one signals this process
    asyncio.run(_load(state, lambda _: engine, lambda _: None))
    assert state.engine is None and engine.stopped
    assert state.load_error == "RuntimeError: the engine could not generate"
    assert exits == [MODEL_LOAD_EXIT_CODE]

"""CPU per streamed token of llamaserve's own streaming path, without HTTP or an engine.

    .venv/bin/python -m bench.frames

A fake engine yields one-token steps; `respond.respond` turns them into SSE frames and the response sends them
to a no-op ASGI `send`. What is left is llamaserve's per-token work (frames, rendering, the SSE response), so a
change to that path shows here without the noise of sockets, the engine and a shared machine. Prints the median
of 5 runs of CPU microseconds per token, for chat and completions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from engine.outputs import ChoiceDelta, PromptInfo, Step
from engine.request import GenerationInput
from schemas import ChatCompletionRequest, CompletionRequest
from server.pipeline import render
from server.pipeline import respond
from server.pipeline.job import Job
from server.settings import Settings
from server.pipeline.validation import ModelFacts, validate

TOKENS = 64
REQUESTS = 300


class _Info:
    name = "bench-model"


class FakeEngine:
    info = _Info()

    async def stream(self, prompt: list[int], plan: GenerationInput, request_id: str) -> AsyncIterator[Step]:
        info = PromptInfo(prompt)
        for i in range(TOKENS):
            last = i == TOKENS - 1
            yield Step([ChoiceDelta(0, " tok", [5], None, "length" if last else None)], info, i + 1, last)


def _job(api: str) -> Job:
    if api == "chat":
        req = ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": TOKENS})
        flavor: render.Flavor = render.ChatFlavor()
    else:
        req = CompletionRequest.model_validate({"prompt": "hi", "stream": True, "max_tokens": TOKENS})
        flavor = render.CompletionFlavor()
    facts = ModelFacts(context_length=4096, is_chat=True, check_token_ids=lambda ids, param: None)
    return Job("bench-1", flavor, [[1, 2, 3]], validate(req, Settings().api_limits, facts, [[1, 2, 3]]), stream=True)


async def _one(api: str) -> None:
    response = await respond.respond(_job(api), FakeEngine(), None)  # type: ignore[arg-type]
    never = asyncio.Event()

    async def receive() -> dict:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    await response({"type": "http", "method": "POST", "path": "/", "headers": []}, receive, send)


async def measure() -> dict[str, float]:
    out = {}
    for api in ("chat", "completions"):
        for _ in range(50):
            await _one(api)
        runs = []
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(REQUESTS):
                await _one(api)
            runs.append((time.process_time() - t0) / (REQUESTS * TOKENS) * 1e6)
        out[api] = sorted(runs)[2]
    return out


def main() -> None:
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(measure())
    else:
        result = uvloop.run(measure())
    for api, us in result.items():
        print(f"{api:<12} {us:5.1f} µs CPU per streamed token (median of 5)")


if __name__ == "__main__":
    main()

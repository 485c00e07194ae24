"""A scripted stand-in for LlamaEngine, for in-process tests of the logic between route and engine.

It tokenises one id per character and generates "x" per step after `step_s`; `fail_with` makes every
generation raise that exception (as the real engine maps vLLM's), so routes can be driven without vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from engine import outputs
from engine.adapters import AdapterSet
from engine.core import ModelInfo
from engine.request import GenerationInput
from server.app import create_app
from server.settings import Settings


class ScriptedEngine:
    def __init__(self, step_s: float = 0.0, fail_with: Exception | None = None, max_model_len: int = 10**9):
        self.info = ModelInfo("scripted", "scripted", max_model_len, 1000, True, "Meta")
        self.step_s = step_s
        self.fail_with = fail_with
        self.started: list[str] = []  # engine request ids, in order
        self.aborted: list[str] = []
        self.is_dead = False
        self.warm_ups = 0
        self.adapters = AdapterSet()  # none loaded unless a test puts one
        self.adapter_activity = None  # LoRA off unless a test sets one (engine/adapter_activity.py)

    # --- what the server calls
    def shutdown(self) -> None: ...
    def num_unfinished_requests(self) -> int: return 0
    async def check_health(self) -> None: ...
    async def abort(self, request_id: str) -> None: self.aborted.append(request_id)
    async def warm_up(self) -> None: self.warm_ups += 1
    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]: return [ord(c) % 1000 for c in text] or [0]
    async def encode_chat(self, messages, max_chars=None, tools=None) -> list[int]:
        return await self.encode_text("".join(m["content"] for m in messages))
    def decode(self, token_ids, skip_special_tokens=False) -> str: return "".join(chr(t) for t in token_ids)
    async def decode_text(self, token_ids) -> str: return self.decode(token_ids)
    def check_token_ids(self, token_ids, param) -> None: ...

    async def stream(self, prompt_ids: list[int], plan: GenerationInput, request_id: str) -> AsyncIterator[outputs.Step]:
        self.started.append(request_id)
        if self.fail_with is not None:
            raise self.fail_with
        try:
            for i in range(plan.max_tokens):
                await asyncio.sleep(self.step_s)
                last = i == plan.max_tokens - 1
                choices = [outputs.ChoiceDelta(c, "x", [120], None, "length" if last else None) for c in range(plan.candidates)]
                yield outputs.Step(choices, outputs.PromptInfo(prompt_ids), (i + 1) * plan.candidates, last)
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise

    async def complete(self, prompt_ids: list[int], plan: GenerationInput, request_id: str) -> outputs.Step:
        final = None
        async for final in self.stream(prompt_ids, plan, request_id):
            pass
        choices = [outputs.ChoiceDelta(c, "x" * plan.max_tokens, [120] * plan.max_tokens, None, "length")
                   for c in range(plan.n)]
        return outputs.Step(choices, outputs.PromptInfo(prompt_ids), final.completion_tokens, True)


def settings(**fields) -> Settings:
    return Settings(**{"rate_limit_rpm": 0, "rate_limit_tpm": 0, **fields})


class InProcess:
    """`async with InProcess(engine, settings) as client`: the app with its lifespan, behind httpx."""

    def __init__(self, engine: ScriptedEngine, cfg: Settings | None = None):
        self.engine = engine
        self.app = create_app(cfg or settings(), engine_factory=lambda _: engine)

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        state = self.app.state.llama
        while state.engine is None:
            await asyncio.sleep(0.01)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")
        return self.client

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)

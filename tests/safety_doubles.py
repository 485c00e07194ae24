"""A scripted engine and a scripted guard for fast in-process tests of the content safety hook.

The engine answers a prompt with its words in capitals, one word per token and step ("say hi bad" -> " SAY HI
BAD"); the guard judges the last turn: "BAD" is violence (S1), "HATE" is hate (S10), "BROKEN" makes it raise,
"SLOW" makes it hang, "GARBLE" makes it answer no verdict. So a lower-case prompt passes the guard and its
capitalised output may not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from engine.core import ModelInfo
from engine.guard_format import GuardFit, GuardReply
from engine.outputs import ChoiceDelta, PromptInfo, Step
from server.app import create_app
from server.settings import Settings
from server.state import ServerState, state_of
from tests import probes
from tests.scripted_engine import ScriptedEngine as BaseScriptedEngine


class ScriptedEngine(BaseScriptedEngine):
    """The shared scripted engine's interface, with word-per-token answers and counts instead of request ids."""

    def __init__(self) -> None:
        super().__init__(max_model_len=4096)
        self.info = ModelInfo("scripted", "scripted", 4096, 0x110000, True, "Meta")
        self.started = 0
        self.aborted = 0
        self.tokens_made = 0

    async def encode_chat(self, messages: list[dict[str, str]], max_chars: int | None = None, tools=None) -> list[int]:
        return [ord(ch) for ch in messages[-1]["content"]]

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(ch) for ch in text]

    def _words(self, prompt_ids: list[int], plan) -> list[str]:
        return [" " + w.upper() for w in self.decode(prompt_ids).split()][: plan.max_tokens]

    async def stream(self, prompt_ids, plan, request_id) -> AsyncIterator[Step]:
        self.started += 1
        words = self._words(prompt_ids, plan)
        prompt = PromptInfo(prompt_ids)
        done = False
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(0)
                self.tokens_made += 1
                last = i == len(words) - 1
                choices = [ChoiceDelta(c, word, [i], None, "stop" if last else None) for c in range(plan.n)]
                yield Step(choices, prompt, (i + 1) * plan.n, last)
            done = True
        finally:
            if not done:
                self.aborted += 1

    async def complete(self, prompt_ids, plan, request_id) -> Step:
        self.started += 1
        words = self._words(prompt_ids, plan)
        self.tokens_made += len(words)
        text = "".join(words)
        choices = [ChoiceDelta(c, text, list(range(len(words))), None, "stop") for c in range(plan.n)]
        return Step(choices, PromptInfo(prompt_ids), len(words) * plan.n, True)


class ScriptedGuard:
    """Its checks cost one token per character of the conversation (as the scripted engine's prompts); `fit` is
    its context and template, or None (unknown, as a remote guard's)."""

    def __init__(self, fit: GuardFit | None = None) -> None:
        self.seen: list[list[dict[str, str]]] = []
        self.closed = False
        self._fit = fit

    async def classify(self, turns: list[dict[str, str]]) -> GuardReply:
        self.seen.append(turns)
        return GuardReply(await self._answer(turns[-1]["content"]), sum(len(t["content"]) for t in turns))

    async def _answer(self, text: str) -> str:
        if "BROKEN" in text:
            raise ConnectionError("guard down")
        if "SLOW" in text:
            await asyncio.sleep(60)
        if "GARBLE" in text:
            return "I think it is fine"
        codes = [code for word, code in (("BAD", "S1"), ("HATE", "S10")) if word in text]
        return "unsafe\n" + ",".join(codes) if codes else "safe"

    async def fit(self) -> GuardFit | None:
        return self._fit

    async def close(self) -> None:
        self.closed = True


def settings(**overrides) -> Settings:
    base = {"guard": "remote", "guard_url": "http://guard.invalid", "rate_limit_rpm": 0, "rate_limit_tpm": 0}
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def running(
    config: Settings, guard=None, engine: ScriptedEngine | None = None,
    guard_factory: Callable[[Settings], object] | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, ServerState, ScriptedEngine]]:
    engine = engine or ScriptedEngine()
    app = create_app(config, engine_factory=lambda _: engine, guard_factory=guard_factory or (lambda _: guard))
    async with app.router.lifespan_context(app):
        state = state_of(app)
        await state.loader
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield client, state, engine


def sse_events(body: str) -> list[dict | str]:
    """The stream's data events in order, "[DONE]" included where it came."""
    events, done = probes.sse_events(body)
    return [*events, *(["[DONE]"] if done else [])]

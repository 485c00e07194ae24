"""Cheap work first: a generation request passes its key's rate limits and takes a slot before its prompt is
tokenised or templated; the exact count then settles the reservation, and a request refused after that (a prompt
too long for the context) is charged for the work it caused. In process, on the scripted engine."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import httpx

from tests.probes import metric
from tests.scripted_engine import InProcess, ScriptedEngine, settings

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class CountingEngine(ScriptedEngine):
    """Counts the prompts it tokenises; each generation stops after `stop_after` tokens."""

    def __init__(self, stop_after: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.encoded = 0
        self.stop_after = stop_after

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded += 1
        return await super().encode_text(text, add_special_tokens)

    async def encode_chat(self, messages, max_chars=None, tools=None) -> list[int]:
        self.encoded += 1
        return await super().encode_text("".join(m["content"] for m in messages))

    def stream(self, prompt_ids, plan, request_id):
        if self.stop_after is not None:
            plan = dataclasses.replace(plan, max_tokens=min(plan.max_tokens, self.stop_after))
        return super().stream(prompt_ids, plan, request_id)


async def _posts(engine: ScriptedEngine, bodies: list[tuple[str, dict]], **cfg) -> tuple[list[httpx.Response], str]:
    """The responses to `bodies` (path, body) sent one after another, and /metrics read after the last."""
    async with InProcess(engine, settings(**cfg)) as client:
        responses = [await client.post(path, json=body) for path, body in bodies]
        return responses, (await client.get("/metrics")).text


def test_a_request_over_its_rate_limit_is_refused_before_its_prompt_is_tokenised():
    engine = CountingEngine()
    responses, _ = asyncio.run(_posts(engine, [("/v1/chat/completions", CHAT)] * 3, rate_limit_rpm=1))
    assert [r.status_code for r in responses] == [200, 429, 429]
    assert responses[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert engine.encoded == 1


def test_a_too_long_prompt_is_charged_its_tokens_until_the_key_is_refused():
    # 60 characters, 60 tokens on the scripted engine, for a context of 50: refused after tokenising, each time
    # charged its 60 prompt tokens (reserved at admission on an estimate of 15 + 1). 125 tokens a minute: the
    # third finds 5 left and needs 16, which the bucket refills in 5 s.
    engine = CountingEngine(max_model_len=50)
    body = {"prompt": "x" * 60, "max_tokens": 1}
    started = time.monotonic()
    responses, _ = asyncio.run(_posts(engine, [("/v1/completions", body)] * 3, rate_limit_tpm=125))
    refilled = math.ceil((time.monotonic() - started) * 125 / 60)
    assert [r.status_code for r in responses] == [400, 400, 429], [r.text for r in responses]
    assert responses[0].json()["error"]["code"] == "context_length_exceeded"
    # The headers of a refusal show the key's state after it was charged.
    for response, left in zip(responses, (65, 5)):
        assert left <= int(response.headers["x-ratelimit-remaining-tokens"]) <= left + refilled
    assert responses[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(responses[2].headers["retry-after"]) >= 1
    assert engine.encoded == 2  # the refused one did no work


def test_a_request_refused_after_admission_gives_its_slot_back():
    engine = CountingEngine(max_model_len=50)
    too_long = ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x" * 60}]})
    responses, metrics = asyncio.run(_posts(engine, [too_long, too_long, ("/v1/chat/completions", CHAT)],
                                            max_concurrent_requests=1, max_queued_requests=0))
    assert [r.status_code for r in responses] == [400, 400, 200]
    assert metric(metrics, "llamaserve_requests_in_flight") == 0


def test_a_full_response_shows_the_token_limit_after_its_settlement():
    # 4 prompt tokens + 100 reserved, 3 generated: the response's headers count 7 tokens, not 104 (of 120 a
    # minute: the bucket refills 2 a second, at most one while this request runs in under half a second).
    engine = CountingEngine(stop_after=3)
    body = {"prompt": "abcd", "max_tokens": 100}
    responses, _ = asyncio.run(_posts(engine, [("/v1/completions", body)], rate_limit_tpm=120))
    assert responses[0].status_code == 200 and responses[0].json()["usage"]["completion_tokens"] == 3
    assert 113 <= int(responses[0].headers["x-ratelimit-remaining-tokens"]) <= 114


def test_a_chat_without_max_tokens_reserves_the_default_not_the_context():
    # A context of 2,000 tokens and 10,000 a minute: each chat reserves 2 + 256 while it runs, not 2,000.
    engine = CountingEngine(step_s=0.01, stop_after=20, max_model_len=2000)

    async def main() -> list[httpx.Response]:
        async with InProcess(engine, settings(rate_limit_tpm=10_000)) as client:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(8)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]

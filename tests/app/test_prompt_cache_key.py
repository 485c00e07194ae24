"""`prompt_cache_key`, OpenAI's prompt-cache routing hint, on both completion routes: accepted without the
`extra-parameters` header, bounded, and never part of what the engine is asked (so it cannot change the output),
whether a client also sends the `x-session-id` header the endpoint picker reads or not. In process, on the scripted
engine."""

from __future__ import annotations

import asyncio

import pytest

from schemas.common import PROMPT_CACHE_KEY_MAX_CHARS
from tests.scripted_engine import InProcess, ScriptedEngine

CHAT = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "seed": 7})
TEXT = ("/v1/completions", {"prompt": "hi", "max_tokens": 3, "seed": 7})
AZURE_CHAT = ("/chat/completions", CHAT[1])


class RecordingEngine(ScriptedEngine):
    """Keeps what each generation asked the engine for: the prompt's tokens and the resolved input."""

    def __init__(self):
        super().__init__()
        self.asked: list[tuple[list[int], object]] = []

    async def stream(self, prompt_ids, plan, request_id):
        self.asked.append((list(prompt_ids), plan))
        async for step in super().stream(prompt_ids, plan, request_id):
            yield step


def post_all(requests: list[tuple[str, dict, dict]]) -> tuple[RecordingEngine, list]:
    engine = RecordingEngine()

    async def main():
        async with InProcess(engine) as client:
            return [await client.post(path, json=body, headers=headers) for path, body, headers in requests]

    return engine, asyncio.run(main())


@pytest.mark.parametrize("route", [CHAT, TEXT, AZURE_CHAT], ids=["chat", "completions", "azure-chat"])
def test_the_key_is_accepted_and_the_engine_is_asked_the_same(route, clean_env):
    path, body = route
    session = {"prompt_cache_key": "conv-5f1c2a"}
    engine, answers = post_all([
        (path, body, {}),
        (path, {**body, **session}, {}),
        (path, {**body, **session}, {"x-session-id": "conv-5f1c2a"}),
        (path, body, {"x-session-id": "conv-5f1c2a"}),
        (path, {**body, **session, "stream": True}, {}),
    ])
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    plain_ids, plain_plan = engine.asked[0]
    for ids, plan in engine.asked[1:4]:
        assert ids == plain_ids and plan == plain_plan
    # Not passed through to vLLM either (its own field of that name would be a different request).
    assert "prompt_cache_key" not in engine.asked[4][1].pass_through
    texts = [a.json()["choices"][0] for a in answers[:4]]
    assert all(t == texts[0] for t in texts)


@pytest.mark.parametrize("value, why", [
    (42, "string"),
    (["conv"], "string"),
    ("k" * (PROMPT_CACHE_KEY_MAX_CHARS + 1), str(PROMPT_CACHE_KEY_MAX_CHARS)),
], ids=["number", "list", "too-long"])
def test_a_bad_key_is_a_clear_400(value, why, clean_env):
    path, body = CHAT
    engine, [answer] = post_all([(path, {**body, "prompt_cache_key": value}, {})])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "prompt_cache_key" and why in error["message"], error
    assert not engine.asked


def test_the_longest_key_is_accepted(clean_env):
    path, body = TEXT
    _, [answer] = post_all([(path, {**body, "prompt_cache_key": "k" * PROMPT_CACHE_KEY_MAX_CHARS}, {})])
    assert answer.status_code == 200

"""server/pipeline/truncation.py: the oldest turns go first, the instructions stay, a call keeps its results."""

from __future__ import annotations

import asyncio

from server.pipeline.truncation import drop_oldest_turns


def _encode(messages):
    async def encode(kept):
        return [0] * sum(len(m["content"]) for m in kept)
    return encode


def _fit(chat, context, reserve=1):
    encode = _encode(chat)
    prompt = asyncio.run(encode(chat))
    return asyncio.run(drop_oldest_turns(chat, prompt, encode, reserve, context))


def test_keeps_system_drops_oldest_and_never_starts_with_a_tool_result():
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u" * 10},
            {"role": "assistant", "content": "a" * 10}, {"role": "tool", "content": "t" * 10},
            {"role": "user", "content": "v" * 10}]
    kept, prompt = _fit(chat, context=30)
    # Cutting at the tool result would fit in 21 tokens; it is skipped for the next turn: system + last user.
    assert [m["role"] for m in kept] == ["system", "user"] and kept[1]["content"] == "v" * 10
    assert len(prompt) == 11


def test_unchanged_when_it_fits_or_when_nothing_fits():
    chat = [{"role": "user", "content": "u" * 10}, {"role": "user", "content": "v" * 10}]
    assert _fit(chat, context=100)[0] == chat
    assert _fit(chat, context=5)[0] == chat
    assert [m["content"] for m in _fit(chat, context=15)[0]] == ["v" * 10]

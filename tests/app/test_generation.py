"""The gate (server/pipeline/generation.py) walks a request through each of its steps once. In process, on the
scripted engine and the scripted guard (tests/safety_doubles.py), behind the real app and routes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import schemas.chat
from schemas import ChatCompletionRequest
from server.errors import InvalidParameter
from server.models import adapters
from server.pipeline import generation, parse, respond, validation
from server.pipeline.tools import plan
from tests.safety_doubles import ScriptedGuard, running, settings

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CHAT = {"messages": [{"role": "user", "content": "say hi"}], "max_tokens": 4, "tools": [WEATHER]}


@pytest.fixture()
def calls(monkeypatch) -> Counter:
    """Counts the calls of each step of the walk, wherever a module holds its own name for it."""
    counted: Counter = Counter()

    def count(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counting(*args: Any, **kwargs: Any) -> Any:
            counted[name] += 1
            return fn(*args, **kwargs)

        return counting

    steps = [
        (parse, "parse_request"),
        (adapters, "resolve"),
        (validation, "check_request"),
        (generation, "check_request"),
        (generation, "validate"),
        (plan, "resolve"),
        (schemas.chat, "template_messages"),
        (generation, "template_messages"),
        (respond, "respond"),
    ]
    # The guard's side has no step of its own: one there (its own template messages, say) would count here.
    import server.safety.moderation as moderation

    steps.append((moderation, "template_messages"))
    labels = {(adapters, "resolve"): "model.resolve", (plan, "resolve"): "tools.resolve"}
    for module, name in [(m, n) for m, n in steps if hasattr(m, n)]:
        monkeypatch.setattr(module, name, count(labels.get((module, name), name), getattr(module, name)))
    return counted


@pytest.mark.parametrize("stream", [False, True])
def test_a_guarded_chat_with_tools_passes_each_step_of_the_gate_once(calls, stream):
    async def scenario():
        guard = ScriptedGuard()
        async with running(settings(guard_check="prompt"), guard) as (client, _, _engine):
            reply = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            return reply, guard

    reply, guard = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert reply.status_code == 200, reply.text
    assert calls == Counter({"parse_request": 1, "model.resolve": 1, "check_request": 1, "validate": 1,
                             "tools.resolve": 1, "template_messages": 1, "respond": 1})
    # The guard read the chat the gate put in the Job: the tools it declares, then the user's turn.
    [[turn]] = guard.seen
    assert turn["role"] == "user" and '"name": "get_weather"' in turn["content"]
    assert turn["content"].endswith("\n\nsay hi")


def test_a_completion_passes_the_rules_once(calls):
    async def scenario():
        async with running(settings(guard="off")) as (client, _, _engine):
            return await client.post("/v1/completions", json={"prompt": "say hi", "max_tokens": 4, "n": 2})

    reply = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert reply.status_code == 200, reply.text
    assert calls["check_request"] == 1 and calls["validate"] == 1 and calls["model.resolve"] == 1


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {**CHAT, "model": "not-served"}),
    ("/v1/completions", {"prompt": "hi", "model": "not-served"}),
])
def test_a_model_not_served_is_one_404_before_any_rule(calls, path, body):
    async def scenario():
        async with running(settings(guard="off")) as (client, _, _engine):
            return await client.post(path, json=body)

    reply = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert calls["model.resolve"] == 1 and calls["check_request"] == 0


def _nested(levels: int) -> dict:
    schema: dict = {"type": "array"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return {"type": "object", "properties": {"a": schema}}


DEEP = _nested(12)  # deeper than structured.MAX_NESTING (10): a schema rule, run for tools by the gate


@pytest.mark.parametrize("fields,param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "r"}]},
     "messages"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": DEEP}}]}, "tools"),
])
def test_the_tools_rules_refuse_with_the_gates_own_errors(fields, param):
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})
    with pytest.raises(InvalidParameter) as refused:
        plan.resolve(req, "llama3_json")
    assert refused.value.param == param and refused.value.status == 400

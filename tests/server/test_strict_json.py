"""Every structured answer parses with Python's strict json.loads, on the real engine and the tiny random-weight
model (whose noise is what writes control characters and blanks when a grammar lets it): response_format
json_schema and forced tool calls, streamed and not, 200 seeded requests of each."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.sse_client import read_events

# Strings bounded in length: the random model never ends an unbounded one, and xgrammar's rule for bounded strings
# is the one that let control characters through.
RECORD = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4}, "maxItems": 2},
    "ok": {"type": "boolean"},
    "kind": {"enum": ["a", "b\nc"]},
}, "required": ["name", "tags", "ok", "kind"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["city"]}}}
ASK = [{"role": "user", "content": "Answer in JSON"}]
REQUESTS = 200
CONCURRENCY = 16


def _schema_request(seed: int) -> dict:
    return {"messages": ASK, "max_tokens": 120, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "record", "schema": RECORD}}}


def _tool_request(seed: int) -> dict:
    return {"messages": ASK, "max_tokens": 120, "seed": seed, "tools": [WEATHER], "tool_choice": "required"}


def _all(server, fn, seeds) -> list:
    with httpx.Client(base_url=server.base_url, timeout=300) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda seed: fn(client, seed), seeds))


def _whole(client: httpx.Client, body: dict) -> dict:
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()["choices"][0]


def _streamed(client: httpx.Client, body: dict) -> tuple[str, str, str]:
    """(content, tool call arguments, finish_reason) of a streamed answer."""
    content, arguments, finish = [], [], None
    events, done = read_events(client, "/v1/chat/completions", {**body, "stream": True})
    assert done
    for event in events:
        for choice in event["choices"]:
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            arguments += [c["function"].get("arguments") or "" for c in delta.get("tool_calls") or ()]
            finish = choice.get("finish_reason") or finish
    return "".join(content), "".join(arguments), finish


def _strict(text: str) -> str | None:
    """None when `text` parses with the strict json.loads, else why not."""
    try:
        json.loads(text)
    except ValueError as exc:
        return f"{exc}: {text!r}"
    return None


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_all_parse_strictly(server, stream):
    def one(client, seed):
        if stream:
            content, _, finish = _streamed(client, _schema_request(seed))
        else:
            choice = _whole(client, _schema_request(seed))
            content, finish = choice["message"]["content"], choice["finish_reason"]
        return finish, _strict(content)

    results = _all(server, one, range(REQUESTS))
    assert [r for r in results if r != ("stop", None)] == []


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_calls_all_parse_strictly(server, stream):
    def one(client, seed):
        if stream:
            _, arguments, finish = _streamed(client, _tool_request(seed))
        else:
            choice = _whole(client, _tool_request(seed))
            arguments, finish = choice["message"]["tool_calls"][0]["function"]["arguments"], choice["finish_reason"]
        return finish, _strict(arguments)

    results = _all(server, one, range(REQUESTS))
    assert [r for r in results if r != ("tool_calls", None)] == []


def test_json_object_answers_hold_no_control_character_and_no_free_whitespace(server):
    def one(client, seed):
        body = {"messages": ASK, "max_tokens": 60, "seed": seed, "response_format": {"type": "json_object"}}
        return _whole(client, body)["message"]["content"]

    for text in _all(server, one, range(40)):
        assert not any(ord(c) < 0x20 for c in text), repr(text)
        assert text == "{}" or text.startswith('{"'), repr(text)  # free whitespace would open with "{ " or "{\n"

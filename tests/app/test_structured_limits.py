"""Schemas for structured output held to OpenAI's limits, and their grammars built off the event loop within a
time bound: in-process, on the scripted engine (tests/scripted_engine.py)."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

import pytest

from engine.grammar import strict_json_grammar
from server.pipeline import structured
from tests.scripted_engine import InProcess, ScriptedEngine, settings

MSG = [{"role": "user", "content": "hi"}]


def _object(properties: dict, **more) -> dict:
    return {"type": "object", "properties": properties, **more}


def _nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = _object({"a": schema})
    return schema


def _as_tool(schema: dict) -> dict:
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}], "tool_choice": "required"}


def _as_response_format(schema: dict) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


async def _post(body: dict, engine: ScriptedEngine | None = None, **cfg):
    engine = engine or ScriptedEngine()
    async with InProcess(engine, settings(**cfg)) as client:
        resp = await client.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1, **body})
    return resp, engine


def post(body: dict, **cfg):
    return asyncio.run(_post(body, **cfg))


OVER_THE_LIMITS = [
    (_nested(11), "schema_too_deep", "more than 10 levels"),
    (_object({f"p{i}": {"type": "integer"} for i in range(5001)}), "schema_too_large", "5001 object properties"),
    (_object({"a": {"enum": list(range(600))}, "b": {"enum": list(range(401))}}), "schema_too_large",
     "1001 enum values"),
    (_object({"a": {"const": "x" * 120_001}}), "schema_too_large", "120002 characters"),
    (_object({"a": {"enum": [f"{i:03d}" + "v" * 57 for i in range(251)]}}), "schema_too_large",
     "string enum of over 250 values holds 15060 characters"),
]


@pytest.mark.parametrize("wrap,param", [(_as_tool, "tools"), (_as_response_format, "response_format")])
@pytest.mark.parametrize("schema,code,says", OVER_THE_LIMITS)
def test_a_schema_over_openais_limits_is_a_400_naming_the_limit_and_the_param(wrap, param, schema, code, says):
    resp, engine = post(wrap(schema))
    assert resp.status_code == 400, resp.text[:300]
    err = resp.json()["error"]
    assert (err["param"], err["code"]) == (param, code) and says in err["message"], err
    assert engine.started == []


def test_tools_are_counted_together():
    tools = [{"type": "function", "function": {"name": f"f{t}", "parameters": _object(
        {f"p{i}": {"type": "integer"} for i in range(2000)})}} for t in range(3)]
    resp, _ = post({"tools": tools})
    assert resp.status_code == 400 and "6000 object properties" in resp.json()["error"]["message"]


@pytest.mark.parametrize("wrap", [_as_tool, _as_response_format])
def test_schemas_at_the_limits_are_served(wrap):
    at_the_limits = _object({
        "deep": _nested(9),
        "choice": {"enum": [f"{i:03d}" + "v" * 57 for i in range(250)]},  # 15,000 characters, 250 values
        "more": {"enum": list(range(750))},
    })
    resp, engine = post(wrap(at_the_limits))
    assert resp.status_code == 200, resp.text[:300]
    assert len(engine.started) == 1


def _blocking_builds(monkeypatch) -> tuple[threading.Event, list[str]]:
    """Grammar builds that wait until released, recording the thread each runs on."""
    release, threads = threading.Event(), []

    def build(schema, param):
        threads.append(threading.current_thread().name)
        release.wait(30)
        return 'root ::= "{}"'

    monkeypatch.setattr(structured, "strict_json_grammar", build)
    monkeypatch.setattr(structured, "_GRAMMARS", OrderedDict())  # no grammar built for real answers these builds
    return release, threads


def test_a_schema_sent_again_is_not_built_again(monkeypatch):
    builds = []

    def build(schema, param):
        builds.append(param)
        return strict_json_grammar(schema, param)

    monkeypatch.setattr(structured, "strict_json_grammar", build)
    monkeypatch.setattr(structured, "_GRAMMARS", OrderedDict())
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    first = asyncio.run(structured._build(schema, "response_format", 10))
    again = asyncio.run(structured._build(dict(schema), "response_format", 10))
    reordered = asyncio.run(structured._build({"required": ["city"], **schema}, "response_format", 10))
    assert first == again and builds == ["response_format", "response_format"]  # key order is part of the key
    assert reordered == first
    monkeypatch.setattr(structured, "GRAMMAR_CACHE_SIZE", 1)
    asyncio.run(structured._build({"type": "object"}, "response_format", 10))
    assert len(structured._GRAMMARS) == 1


def test_a_grammar_that_takes_too_long_to_build_is_a_400_and_is_built_off_the_event_loop(monkeypatch):
    release, threads = _blocking_builds(monkeypatch)
    try:
        resp, engine = post(_as_response_format(_object({"a": {"type": "integer"}})), grammar_timeout_s=0.2)
    finally:
        release.set()
    err = resp.json()["error"]
    assert resp.status_code == 400 and (err["param"], err["code"]) == ("response_format", "schema_too_complex"), err
    assert "0.2 s" in err["message"] and engine.started == []
    assert threads and threads[0].startswith("grammar")


def test_forced_tool_call_grammars_are_bounded_too(monkeypatch):
    release, _ = _blocking_builds(monkeypatch)
    try:
        resp, _ = post(_as_tool(_object({"a": {"type": "integer"}})), grammar_timeout_s=0.2)
    finally:
        release.set()
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "tools"


def test_when_every_builder_is_busy_a_request_gets_a_503_to_retry(monkeypatch):
    release, threads = _blocking_builds(monkeypatch)
    busy = [structured._BUILDERS.submit(structured.strict_json_grammar, {}, "tools") for _ in range(2)]
    try:
        resp, _ = post(_as_response_format(_object({"a": {"type": "integer"}})), grammar_timeout_s=0.2)
    finally:
        release.set()
        for future in busy:
            future.result(30)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1", resp.text[:300]
    assert resp.json()["error"]["code"] == "grammar_builders_busy"
    assert len(threads) == 2  # the waiting request's build was cancelled before it started


def test_json_object_needs_no_schema_and_gets_the_strict_grammar():
    engine = ScriptedEngine()
    seen = []
    original = engine.stream

    async def stream(prompt_ids, plan, request_id):
        seen.append(plan.structured_output)
        async for step in original(prompt_ids, plan, request_id):
            yield step

    engine.stream = stream
    resp, _ = asyncio.run(_post({"response_format": {"type": "json_object"}}, engine))
    assert resp.status_code == 200
    assert seen and seen[0].grammar == structured.json_object_grammar()

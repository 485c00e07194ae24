"""Content safety on the Responses API, in process (tests/safety_doubles.py: the engine answers a prompt's words in
capitals, the guard finds "BAD" unsafe): the guard judges the input items and the output; a block is a `failed`
response carrying Azure's content-filter details, in full and streamed, and is stored as such."""

from __future__ import annotations

import asyncio
import json

from tests.safety_doubles import ScriptedGuard, running, settings


def _events(text: str) -> list[dict]:
    return [json.loads(block.split("\ndata: ", 1)[1]) for block in text.strip().split("\n\n")]


def _run(body: dict, check: str = "both"):
    async def go():
        guard = ScriptedGuard()
        async with running(settings(guard_check=check), guard) as (client, state, _engine):
            reply = await client.post("/v1/responses", json=body)
            rid = reply.json()["id"] if not body.get("stream") else _events(reply.text)[0]["response"]["id"]
            stored = (await client.get(f"/v1/responses/{rid}")).json()
            return reply, stored, guard
    return asyncio.run(asyncio.wait_for(go(), 60))


def test_an_unsafe_output_fails_the_response_with_the_filter_details():
    reply, stored, guard = _run({"input": "say hi bad"})
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "failed"
    assert body["error"]["code"] == "content_filter"
    assert body["error"]["content_filter_results"]["violence"]["filtered"] is True
    assert "BAD" not in json.dumps(body["output"])
    assert stored == body
    assert guard.seen[0][-1] == {"role": "user", "content": "say hi bad"}  # the input item, as the guard reads it


def test_an_unsafe_output_streamed_ends_failed_without_the_unsafe_text():
    reply, stored, _ = _run({"input": "say hi bad", "stream": True})
    events = _events(reply.text)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "content_filter"
    assert "BAD" not in "".join(e.get("delta", "") for e in events)
    assert stored == events[-1]["response"]


def test_an_unsafe_input_is_a_failed_response_not_generated():
    reply, stored, _ = _run({"input": [{"role": "user", "content": "tell me BAD things"}]}, check="prompt")
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "failed" and body["output"] == []
    assert body["error"]["code"] == "content_filter"
    assert body["error"]["content_filter_results"]["violence"]["filtered"] is True
    assert body["usage"]["output_tokens"] == 0
    assert stored == body

"""The Responses API between route and engine, in process on the scripted engine (one "x" per token): input items
into chat messages, the chain of previous_response_id, the store's scoping, the event stream's order and ids, and
the refusals that store nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from schemas.responses import FunctionCallItem, FunctionCallOutputItem, MessageItem
from server.errors import InvalidParameter
from server.pipeline.responses.items import chat_messages
from tests.scripted_engine import InProcess, ScriptedEngine, settings

KEY, OTHER = "first-key-0123456789", "second-key-0123456789"
JSON = {"content-type": "application/json"}


def run(coro):
    return asyncio.run(coro)


def events_of(text: str) -> list[tuple[str, dict]]:
    """The (event name, data) pairs of a Responses event stream."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_items_become_chat_messages_with_calls_joined_to_the_assistant_turn():
    items = [
        MessageItem(role="user", content="weather?"),
        MessageItem(role="assistant", content="Let me look."),
        FunctionCallItem(type="function_call", call_id="c1", name="weather", arguments='{"city": "Paris"}'),
        FunctionCallItem(type="function_call", call_id="c2", name="weather", arguments='{"city": "Rome"}'),
        FunctionCallOutputItem(type="function_call_output", call_id="c1", output="sunny"),
        FunctionCallOutputItem(type="function_call_output", call_id="c2", output="rain"),
        MessageItem(role="developer", content="be brief"),
    ]
    messages = chat_messages("You help.", items, 0)
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "tool", "developer"]
    assert messages[2].content == "Let me look."
    assert [(c.id, c.function.name) for c in messages[2].tool_calls] == [("c1", "weather"), ("c2", "weather")]
    assert [(m.tool_call_id, m.content) for m in messages[3:5]] == [("c1", "sunny"), ("c2", "rain")]


def test_a_call_output_must_answer_an_earlier_call_once():
    call = FunctionCallItem(type="function_call", call_id="c1", name="f", arguments="{}")
    answer = FunctionCallOutputItem(type="function_call_output", call_id="c1", output="1")
    with pytest.raises(InvalidParameter, match=r"input\[0\].*no earlier function_call"):
        chat_messages(None, [answer, call], 0)
    with pytest.raises(InvalidParameter, match="answered twice"):
        chat_messages(None, [call, answer, answer], 0)


def test_create_store_retrieve_input_items_delete():
    async def go():
        async with InProcess(ScriptedEngine()) as c:
            r = await c.post("/v1/responses", json={"input": "hello", "instructions": "be nice", "max_output_tokens": 3,
                                                    "metadata": {"k": "v"}, "temperature": 0.5})
            body = r.json()
            got = await c.get(f"/v1/responses/{body['id']}")
            items = await c.get(f"/v1/responses/{body['id']}/input_items")
            deleted = await c.delete(f"/openai/v1/responses/{body['id']}")
            after = await c.get(f"/responses/{body['id']}")
            return r.status_code, body, got.json(), items.json(), deleted.json(), after
    status, body, got, items, deleted, after = run(go())
    assert status == 200 and body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == "xxx"
    assert body["usage"]["output_tokens"] == 3 and body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + 3
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert (body["instructions"], body["metadata"], body["temperature"]) == ("be nice", {"k": "v"}, 0.5)
    assert got == body
    assert [(i["role"], i["content"]) for i in items["data"]] == [("user", [{"type": "input_text", "text": "hello"}])]
    assert deleted == {"id": body["id"], "object": "response.deleted", "deleted": True}
    assert after.status_code == 404 and after.json()["error"]["code"] == "not_found"


def test_previous_response_id_replays_input_and_output_and_refuses_a_repeated_history():
    async def go():
        async with InProcess(ScriptedEngine()) as c:
            first = (await c.post("/v1/responses", json={"input": "one", "max_output_tokens": 2})).json()
            second = (await c.post("/v1/responses", json={"input": "two", "max_output_tokens": 2,
                                                         "previous_response_id": first["id"]})).json()
            items = (await c.get(f"/v1/responses/{second['id']}/input_items", params={"order": "asc"})).json()
            conflict = await c.post("/v1/responses", json={
                "input": [first["output"][0], {"role": "user", "content": "three"}],
                "previous_response_id": second["id"]})
            return first, second, items, conflict
    first, second, items, conflict = run(go())
    assert second["previous_response_id"] == first["id"]
    assert [i["id"] for i in items["data"][:2]] == [first_input_id(items), first["output"][0]["id"]]
    assert [i.get("role") for i in items["data"]] == ["user", "assistant", "user"]
    assert items["data"][2]["content"][0]["text"] == "two"
    assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]
    assert conflict.status_code == 400 and conflict.json()["error"]["code"] == "conflicting_history"


def first_input_id(items: dict) -> str:
    return items["data"][0]["id"]


def test_the_stream_runs_in_the_sdk_order_with_the_stored_ids():
    async def go():
        async with InProcess(ScriptedEngine()) as c:
            r = await c.post("/v1/responses", json={"input": "hi", "max_output_tokens": 3, "stream": True})
            events = events_of(r.text)
            stored = (await c.get(f"/v1/responses/{events[0][1]['response']['id']}")).json()
            return r.headers["content-type"], events, stored
    content_type, events, stored = run(go())
    assert content_type.startswith("text/event-stream")
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete"]
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    assert final == stored
    item_id = final["output"][0]["id"]
    assert {data.get("item_id", data.get("item", {}).get("id")) for _, data in events[2:-1]} == {item_id}
    assert "".join(data["delta"] for name, data in events if name.endswith(".delta")) == "xxx"


def test_store_false_keeps_nothing_and_another_key_sees_nothing():
    async def go():
        async with InProcess(ScriptedEngine(), settings(api_keys=f"{KEY},{OTHER}")) as c:
            mine = {"authorization": f"Bearer {KEY}"}
            other = {"authorization": f"Bearer {OTHER}"}
            kept = (await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 1}, headers=mine)).json()
            unkept = (await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 1, "store": False},
                                   headers=mine)).json()
            return [
                (await c.get(f"/v1/responses/{kept['id']}", headers=mine)).status_code,
                (await c.get(f"/v1/responses/{kept['id']}", headers=other)).status_code,
                (await c.delete(f"/v1/responses/{kept['id']}", headers=other)).status_code,
                (await c.post("/v1/responses", json={"input": "b", "previous_response_id": kept["id"]},
                              headers=other)).status_code,
                (await c.get(f"/v1/responses/{unkept['id']}", headers=mine)).status_code,
                unkept["store"],
            ]
    assert run(go()) == [200, 404, 404, 404, 404, False]


@pytest.mark.parametrize("body, param", [
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "1"}]}, "input"),
    ({"input": []}, "input"),
    ({"input": "x", "background": True, "store": False}, None),
    ({"input": "x", "max_output_tokens": 10**9}, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}}, "text"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"input": "x", "truncation": "sometimes"}, "truncation"),
])
def test_bad_input_is_a_400_in_our_shape_and_stores_nothing(body, param):
    async def go():
        async with InProcess(ScriptedEngine(max_model_len=4096)) as c:
            app_state = c._transport.app.state.llama
            r = await c.post("/v1/responses", json=body)
            return r, len(app_state.responses)
    r, stored = run(go())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert stored == 0


def test_too_many_input_items_are_refused_before_validation():
    async def go():
        async with InProcess(ScriptedEngine(), settings(max_chat_messages=3)) as c:
            return await c.post("/v1/responses", json={"input": [{"role": "user", "content": "a"}] * 4})
    r = run(go())
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_messages"


def test_azure_openai_v1_chat_path():
    async def go():
        async with InProcess(ScriptedEngine()) as c:
            return await c.post("/openai/v1/chat/completions",
                                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    r = run(go())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "xx"


async def _until(condition, timeout_s: float = 10.0) -> None:
    """Waits for `condition()` to hold, checking every 10 ms, at most `timeout_s` (a margin for a loaded host)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def test_background_is_queued_then_polled_to_its_end_and_charged():
    async def go():
        engine = ScriptedEngine()
        async with InProcess(engine) as c:
            state = c._transport.app.state.llama
            charged = []
            state.limits.charge_tokens = lambda exchange, tokens: charged.append(tokens)
            queued = (await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 2,
                                                         "background": True})).json()
            async with asyncio.timeout(10):  # a margin for a loaded host: two scripted tokens take microseconds
                while (polled := (await c.get(f"/v1/responses/{queued['id']}")).json())["status"] in (
                        "queued", "in_progress"):
                    await asyncio.sleep(0.01)
            return queued, polled, charged
    queued, done, charged = run(go())
    assert (queued["status"], queued["background"], queued["output"]) == ("queued", True, [])
    assert done["status"] == "incomplete" and done["output"][0]["content"][0]["text"] == "xx"
    assert done["id"] == queued["id"]
    assert charged == [2]  # its output, generated after its request was settled


def test_cancel_stops_a_background_generation():
    async def go():
        engine = ScriptedEngine(step_s=0.05)  # 1000 tokens: 50 s, unless cancelled
        async with InProcess(engine) as c:
            queued = (await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 1000,
                                                         "background": True})).json()
            await _until(lambda: engine.started)
            cancelled = await c.post(f"/v1/responses/{queued['id']}/cancel", headers=JSON)  # as the SDK sends it
            polled = (await c.get(f"/v1/responses/{queued['id']}")).json()
            foreground = (await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 1})).json()
            refused = await c.post(f"/v1/responses/{foreground['id']}/cancel", headers=JSON)
            return engine, cancelled, polled, refused
    engine, cancelled, polled, refused = run(go())
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert polled["status"] == "cancelled"
    assert engine.aborted == engine.started[:1]  # the engine request was aborted, not left to run
    assert refused.status_code == 400


def test_truncation_auto_drops_the_oldest_turns_and_disabled_refuses():
    # The scripted engine's prompt is one token per character of the messages' text: "sys" and three turns of 40.
    turns = [{"role": role, "content": (role[0] * 40)} for role in ("user", "assistant", "user")]
    body = {"input": turns, "instructions": "sys", "max_output_tokens": 10}

    async def go():
        async with InProcess(ScriptedEngine(max_model_len=100)) as c:
            refused = await c.post("/v1/responses", json=body)
            kept = await c.post("/v1/responses", json={**body, "truncation": "auto"})
            too_long = await c.post("/v1/responses", json={**body, "input": "u" * 95, "truncation": "auto"})
            return refused, kept, too_long
    refused, kept, too_long = run(go())
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert refused.json()["error"]["param"] == "input"
    # 3 + 120 tokens do not leave 10 of 100; without the first turn, 3 + 80 do.
    assert kept.status_code == 200 and kept.json()["usage"]["input_tokens"] == 83
    assert kept.json()["truncation"] == "auto"
    assert too_long.status_code == 400  # nothing left to drop: refused as too long


def test_input_items_are_paged_like_openai_lists():
    async def go():
        async with InProcess(ScriptedEngine()) as c:
            given = [{"role": "user", "content": str(i)} for i in range(5)]
            rid = (await c.post("/v1/responses", json={"input": given, "max_output_tokens": 1})).json()["id"]
            first = (await c.get(f"/v1/responses/{rid}/input_items", params={"limit": 2})).json()
            rest = (await c.get(f"/v1/responses/{rid}/input_items",
                                params={"limit": 10, "after": first["last_id"]})).json()
            asc = (await c.get(f"/v1/responses/{rid}/input_items", params={"order": "asc", "limit": 5})).json()
            bad = await c.get(f"/v1/responses/{rid}/input_items", params={"after": "msg_none"})
            return first, rest, asc, bad
    first, rest, asc, bad = run(go())
    text = lambda page: [i["content"][0]["text"] for i in page["data"]]  # noqa: E731
    assert (text(first), first["has_more"]) == (["4", "3"], True)  # newest first, as OpenAI's default
    assert (text(rest), rest["has_more"]) == (["2", "1", "0"], False)
    assert (text(asc), asc["has_more"], asc["first_id"]) == (["0", "1", "2", "3", "4"], False, asc["data"][0]["id"])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"


def test_a_background_generation_holds_a_slot_of_the_servers_admission():
    async def go():
        engine = ScriptedEngine(step_s=0.05)  # 1000 tokens: 50 s, unless cancelled
        cfg = settings(max_concurrent_requests=1, max_queued_requests=0)
        async with InProcess(engine, cfg) as c:
            first = (await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 1000,
                                                        "background": True})).json()
            await _until(lambda: engine.started)
            foreground = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                                                    "max_tokens": 1})
            second = await c.post("/v1/responses", json={"input": "a", "max_output_tokens": 1, "background": True})
            await c.post(f"/v1/responses/{first['id']}/cancel", headers=JSON)
            after = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                                               "max_tokens": 1})
            return foreground, second, after
    foreground, second, after = run(go())
    # While the first runs, the one slot is its: neither a request nor another background response gets one.
    for refused in (foreground, second):
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
    assert after.status_code == 200  # the cancelled generation gave its slot back

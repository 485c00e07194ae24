"""The OpenAI Responses API through the official `openai` SDK, unchanged, on the real server and the tiny model:
create, stream, retrieve, delete, input_items, background + cancel, a function tool round trip, text.format
parsed by `responses.parse`, the store's scoping and bounds; every streamed event checked against the SDK's own
event types."""

from __future__ import annotations

import json
import time
from typing import Literal

import httpx
import openai
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from tests.conftest import ServerProcess
from tests.launches import WITH_THE_SHARED_SERVER, planned, take

MODEL = "llamaserve-tiny-llama3"
KEYS = ("responses-key-one-0123456789", "responses-key-two-0123456789")
EVENTS = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                          "required": ["city"]}}


class Verdict(BaseModel):
    """Bounded answers only: the random-weight model would write digits until max_output_tokens."""

    ok: bool
    grade: Literal["low", "high"]


@planned("bounded_store", group=WITH_THE_SHARED_SERVER)
def _launch_bounded(tiny_model, tmp_path_factory) -> ServerProcess:
    return ServerProcess(["--responses-store-max-count", "2"], env={"LLAMASERVE_API_KEYS": ",".join(KEYS)})


@pytest.fixture(scope="module")
def bounded(request):
    srv = take("bounded_store", request)
    yield srv
    srv.stop_in_background()


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_create_with_instructions_usage_and_incomplete(oai):
    r = oai.responses.create(model=MODEL, input="Hello", instructions="Answer briefly.", max_output_tokens=5,
                             temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "response" and r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.usage.total_tokens == r.usage.input_tokens + 5
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.output[0].type == "message" and r.output_text == r.output[0].content[0].text
    again = oai.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_text",
                                                                                     "text": "Hello"}]}],
                                 instructions="Answer briefly.", max_output_tokens=5, temperature=0,
                                 extra_body={"ignore_eos": True})
    assert again.output_text == r.output_text  # a string input is one user message


def test_logprobs_through_include_in_full_and_streamed(oai, server):
    r = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=3, top_logprobs=2, temperature=0,
                             include=["message.output_text.logprobs"], extra_body={"ignore_eos": True})
    logprobs = r.output[0].content[0].logprobs
    assert len(logprobs) == 3 and all(len(lp.top_logprobs) == 2 for lp in logprobs)
    assert "".join(lp.token for lp in logprobs) == r.output_text
    events = _raw_events(server, {"model": MODEL, "input": "Hi", "max_output_tokens": 3, "top_logprobs": 2,
                                  "temperature": 0, "include": ["message.output_text.logprobs"],
                                  "ignore_eos": True})
    streamed = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert [lp.token for lp in streamed] == [lp.token for lp in logprobs]
    final = events[-1].response.output[0].content[0].logprobs
    assert [(lp.token, lp.logprob) for lp in final] == [(lp.token, lp.logprob) for lp in streamed]


def test_prompt_cache_key_is_taken_and_changes_nothing(oai):
    plain = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0,
                                 extra_body={"ignore_eos": True})
    keyed = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0,
                                 prompt_cache_key="tenant-7", extra_body={"ignore_eos": True})
    assert keyed.prompt_cache_key == "tenant-7" and keyed.output_text == plain.output_text


def test_cached_tokens_count_the_prefix_cache(oai):
    long = f"{time.time_ns()} " + "the llama walks over the green hill and eats grass " * 30
    oai.responses.create(model=MODEL, input=long, max_output_tokens=1)
    second = oai.responses.create(model=MODEL, input=long, max_output_tokens=1)
    assert second.usage.input_tokens_details.cached_tokens >= 128  # vLLM's CPU cache holds 128-token blocks


def test_retrieve_input_items_delete(oai):
    r = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=2, metadata={"run": "test"})
    got = oai.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    items = oai.responses.input_items.list(r.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [("message", "user", "Hi")]
    assert oai.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def test_store_false_leaves_nothing(oai):
    r = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=1, store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def test_previous_response_id_continues_and_an_unknown_one_is_a_404(oai):
    first = oai.responses.create(model=MODEL, input="One", max_output_tokens=3)
    second = oai.responses.create(model=MODEL, input="Two", max_output_tokens=3, previous_response_id=first.id)
    items = oai.responses.input_items.list(second.id, order="asc").data
    assert [i.id for i in items[:2]] == [oai.responses.input_items.list(first.id).data[0].id, first.output[0].id]
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.create(model=MODEL, input="x", previous_response_id="resp_never")
    assert info.value.code == "previous_response_not_found"


def _raw_events(server, body: dict) -> list:
    """The stream's events as the wire has them, each validated by the SDK's own event types."""
    with httpx.stream("POST", server.base_url + "/v1/responses", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    out = []
    for block in raw.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        out.append(EVENTS.validate_python(data))
    return out


def test_stream_events_validate_in_order_with_the_final_ids(oai, server):
    body = {"model": MODEL, "input": "Tell me", "max_output_tokens": 6, "temperature": 0, "ignore_eos": True}
    events = _raw_events(server, body)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[4:-4] == ["response.output_text.delta"] * (len(kinds) - 8)
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert {e.item_id for e in events if hasattr(e, "item_id")} == {final.output[0].id}
    assert "".join(e.delta for e in events if e.type.endswith(".delta")) == final.output_text
    assert oai.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_the_sdk_stream_helper_gives_the_final_response(oai):
    # The helper's final response needs `response.completed`: a JSON answer ends by itself, within the tokens.
    with oai.responses.stream(model=MODEL, input="Grade it", text_format=Verdict, max_output_tokens=40) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        done = stream.get_final_response()
    assert done.status == "completed" and streamed == done.output_text
    assert isinstance(done.output_parsed, Verdict)
    assert oai.responses.retrieve(done.id).output_text == streamed


def test_a_forced_tool_call_round_trip_streams_no_text(oai, server):
    forced = {"type": "function", "name": "get_weather"}
    r = oai.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice=forced,
                             max_output_tokens=100)
    [call] = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    assert r.status == "completed" and not [i for i in r.output if i.type == "message"]
    answer = oai.responses.create(model=MODEL, previous_response_id=r.id, tools=[WEATHER], max_output_tokens=4,
                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                          "output": "sunny, 24 C"}])
    assert answer.status in ("completed", "incomplete") and answer.output
    items = oai.responses.input_items.list(answer.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == call.call_id
    events = _raw_events(server, {"model": MODEL, "input": "Weather in Rome?", "tools": [WEATHER],
                                  "tool_choice": "required", "max_output_tokens": 100})
    kinds = [e.type for e in events]
    assert "response.output_text.delta" not in kinds
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].arguments == done.arguments
    assert done.item_id == final.output[0].id


def test_parse_with_a_json_schema_format(oai):
    r = oai.responses.parse(model=MODEL, input="Grade it", text_format=Verdict, max_output_tokens=40)
    assert r.status == "completed"
    assert isinstance(r.output_parsed, Verdict)


def test_background_then_cancel(oai):
    r = oai.responses.create(model=MODEL, input="Go on", background=True, max_output_tokens=1000,
                             extra_body={"ignore_eos": True})
    assert r.status == "queued" and r.background
    cancelled = oai.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert oai.responses.retrieve(r.id).status == "cancelled"
    quick = oai.responses.create(model=MODEL, input="Go on", background=True, max_output_tokens=2)
    deadline = time.monotonic() + 60  # a margin for a loaded 2-core host: two tokens take well under a second
    while oai.responses.retrieve(quick.id).status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert oai.responses.retrieve(quick.id).status == "incomplete"


@pytest.mark.parametrize("body", [
    {"input": [{"type": "input_image", "image_url": "http://x"}]},
    {"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
    {"input": "x" * 3_000_000},
])
def test_bad_input_is_a_400_in_our_shape(oai, body):
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=MODEL, **body)
    assert info.value.status_code == 400 and info.value.body["param"] == "input"
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["message"]


def test_another_key_gets_404_and_the_bound_evicts_the_oldest(bounded):
    mine, other = (openai.OpenAI(base_url=bounded.base_url + "/v1", api_key=k, max_retries=0) for k in KEYS)
    first = mine.responses.create(model=MODEL, input="a", max_output_tokens=1)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=MODEL, input="b", previous_response_id=first.id)
    assert mine.responses.retrieve(first.id).id == first.id
    newer = [mine.responses.create(model=MODEL, input="c", max_output_tokens=1) for _ in range(2)]
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(first.id)
    assert [mine.responses.retrieve(r.id).id for r in newer] == [r.id for r in newer]

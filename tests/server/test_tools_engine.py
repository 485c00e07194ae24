"""Tool calling on the real engine with the tiny random model, through the openai SDK, azure-ai-inference and httpx.

The random model has no idea what a tool is, so these tests show what the server guarantees whatever the
model: required and named calls parse and match the declared schema (structured output), streamed exactly as
OpenAI streams them; tool results are accepted back; misuse is a 400.
"""

from __future__ import annotations

import copy
import json

import jsonschema
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import (
    AssistantMessage,
    ChatCompletionsNamedToolChoice,
    ChatCompletionsNamedToolChoiceFunction,
    ChatCompletionsToolCall,
    ChatCompletionsToolChoicePreset,
    ChatCompletionsToolDefinition,
    FunctionCall,
    FunctionDefinition,
    ToolMessage,
    UserMessage,
)
from azure.core.credentials import AzureKeyCredential

from tests.sse_client import read_events

MODEL = "llamaserve-tiny-llama3"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Lima", "Tokyo"]},
        "unit": {"enum": ["C", "F"]},
        "detailed": {"type": "boolean"},
    },
    "required": ["city", "unit", "detailed"],
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "PST"]}, "ampm": {"type": "boolean"}},
    "required": ["zone", "ampm"],
}
# Small schemas: the tiny model's tokenizer spends about a token per character of JSON, in a 1,024-token context.
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": TIME_PARAMS}}
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Enough room for any call the schemas allow; the grammar ends the answer once the call is complete.
ROOM = 120


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def azure(server):
    with ChatCompletionsClient(endpoint=server.base_url, credential=AzureKeyCredential("unused")) as c:
        yield c


def assert_valid(name: str, arguments: str) -> None:
    schema = copy.deepcopy(PARAMS[name])
    schema["additionalProperties"] = False  # a forced call has only the declared arguments
    jsonschema.validate(json.loads(arguments), schema)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_gives_a_call_that_matches_its_schema(oai, seed):
    resp = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       max_tokens=ROOM, seed=seed)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in PARAMS
    assert_valid(call.function.name, call.function.arguments)


def test_every_choice_gets_its_call(client):
    body = client.post("/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER, TIME], "n": 2,
                                                     "tool_choice": "required", "max_tokens": ROOM}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        [call] = choice["message"]["tool_calls"]
        assert_valid(call["function"]["name"], call["function"]["arguments"])
    events, done = read_events(client, "/v1/chat/completions", {
        "messages": ASK, "tools": [WEATHER, TIME], "n": 2, "tool_choice": "required", "max_tokens": ROOM,
        "stream": True})
    assert done and events[-1]["usage"]["completion_tokens"] > 0
    for index in (0, 1):
        mine = [c for e in events for c in e["choices"] if c["index"] == index]
        calls = [tc for c in mine for tc in c["delta"].get("tool_calls", ())]
        assert calls[0]["function"]["name"] in PARAMS and calls[0]["id"]
        assert_valid(calls[0]["function"]["name"], "".join(tc["function"]["arguments"] for tc in calls))
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["tool_calls"]
    assert all(len({c["index"] for c in e["choices"]}) == len(e["choices"]) for e in events)


def test_named_function_is_the_one_called(oai):
    for name, tool in (("get_time", TIME), ("get_weather", WEATHER)):
        resp = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=ROOM,
                                           tool_choice={"type": "function", "function": {"name": name}})
        [call] = resp.choices[0].message.tool_calls
        assert call.function.name == name
        assert_valid(name, call.function.arguments)
        assert resp.choices[0].finish_reason == "tool_calls"


def test_required_streams_openais_delta_sequence(oai):
    args = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=ROOM,
                temperature=0)
    chunks = list(oai.chat.completions.create(**args, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.content for d in deltas)  # no call text leaks into content
    calls = [tc for d in deltas for tc in d.tool_calls or ()]
    first, rest = calls[0], calls[1:]
    assert (first.index, first.type, first.function.arguments) == (0, "function", "")
    assert first.id.startswith("call_") and first.function.name in PARAMS
    assert rest and all(tc.index == 0 and tc.id is None and tc.function.name is None for tc in rest)
    arguments = "".join(tc.function.arguments for tc in rest)
    assert_valid(first.function.name, arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1] if c.choices)
    full = oai.chat.completions.create(**args)
    [call] = full.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == (first.function.name, arguments)
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_azure_sdk_required_and_named(azure):
    tools = [
        ChatCompletionsToolDefinition(function=FunctionDefinition(name="get_weather", description="Weather", parameters=WEATHER_PARAMS)),
        ChatCompletionsToolDefinition(function=FunctionDefinition(name="get_time", parameters=TIME_PARAMS)),
    ]
    resp = azure.complete(messages=[UserMessage("Weather in Lima?")], tools=tools,
                          tool_choice=ChatCompletionsToolChoicePreset.REQUIRED, max_tokens=ROOM)
    [call] = resp.choices[0].message.tool_calls
    assert isinstance(call, ChatCompletionsToolCall)
    assert resp.choices[0].finish_reason == "tool_calls"
    assert_valid(call.function.name, call.function.arguments)
    named = ChatCompletionsNamedToolChoice(function=ChatCompletionsNamedToolChoiceFunction(name="get_time"))
    updates = list(azure.complete(messages=[UserMessage("Time?")], tools=tools, tool_choice=named, max_tokens=ROOM,
                                  stream=True))
    parts = [tc for u in updates if u.choices for tc in u.choices[0].delta.tool_calls or ()]
    assert parts[0].function.name == "get_time" and parts[0].id
    assert_valid("get_time", "".join(p.function.arguments for p in parts))
    assert updates[-1].choices[0].finish_reason == "tool_calls"


def test_round_trip_call_result_next_turn(oai):
    first = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                        max_tokens=ROOM)
    assistant = first.choices[0].message
    call = assistant.tool_calls[0]
    history = [
        *ASK,
        assistant.model_dump(exclude_none=True),  # the SDK's message goes back as it came
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})},
    ]
    second = oai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=8)
    assert second.choices[0].message.role == "assistant"
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The result is in the prompt: a longer one gives a longer prompt.
    history[-1]["content"] = json.dumps({"temperature": 21, "sky": "clear, with a light breeze from the west"})
    longer = oai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=8)
    assert longer.usage.prompt_tokens > second.usage.prompt_tokens


def test_azure_round_trip(azure):
    call = ChatCompletionsToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    resp = azure.complete(
        messages=[UserMessage("Weather in Paris?"), AssistantMessage(tool_calls=[call]),
                  ToolMessage(content="sunny", tool_call_id="call_1")],
        tools=[ChatCompletionsToolDefinition(function=FunctionDefinition(name="get_weather", parameters=WEATHER_PARAMS))],
        max_tokens=4,
    )
    assert resp.choices[0].message.role == "assistant"


def test_history_with_several_calls_and_empty_tool_calls(client):
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
             for i, c in enumerate(["Paris", "Lima"])]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "assistant", "content": "Sunny in Paris, rain in Lima.", "tool_calls": []},
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "And Tokyo?"},
    ]
    resp = client.post("/v1/chat/completions", json={"messages": messages, "tools": [WEATHER], "max_tokens": 4})
    assert resp.status_code == 200, resp.text


def test_tools_reach_the_prompt_unless_tool_choice_is_none(client):
    def prompt_tokens(**fields):
        body = client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 1, **fields}).json()
        return body["usage"]["prompt_tokens"]

    plain = prompt_tokens()
    assert prompt_tokens(tools=[WEATHER], tool_choice="none") == plain
    assert prompt_tokens(tools=[WEATHER]) > plain + 50  # the function listing, as JSON


def test_auto_streamed_equals_whole(client, oai):
    # Whatever the random model writes, the held-back stream and the whole answer say the same thing.
    args = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=24, temperature=0,
                extra_body={"ignore_eos": True})
    full = oai.chat.completions.create(**args)
    chunks = list(oai.chat.completions.create(**args, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (full.choices[0].message.content or "")
    assert full.choices[0].message.tool_calls is None and full.choices[0].finish_reason == "length"


BAD = [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages"),
    ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]}, "messages"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize("route", ["/chat/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("fields,param", BAD)
def test_misuse_is_a_400_in_our_error_shape(client, route, fields, param):
    resp = client.post(route, json={"messages": ASK, "max_tokens": 2, **fields})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"]["param"] == param and body["status"] == 400 and body["error"]["message"]


def test_openai_sdk_raises_on_an_undeclared_named_function(oai):
    with pytest.raises(openai.BadRequestError, match="get_time"):
        oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "get_time"}})


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"a": {"type": "no-such-type"}}},
    {"type": "object", "properties": "not an object"},
    {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}},
])
def test_a_schema_the_grammar_cannot_take_is_a_400_and_the_server_lives(client, parameters):
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    resp = client.post("/v1/chat/completions", json={"messages": ASK, "tools": [tool], "tool_choice": "required",
                                                     "max_tokens": 8})
    assert resp.status_code == 400, resp.text
    assert client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2}).status_code == 200

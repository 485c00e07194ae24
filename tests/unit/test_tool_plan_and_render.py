"""Tool calling between route and engine, in-process: request resolution, history for templates, format detection,
and the OpenAI message and delta shapes built from scripted model output."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.outputs import ChoiceDelta
from engine.tool_format import detect
from schemas.chat import ChatCompletionRequest, template_messages
from server.pipeline import render
from server.errors import APIError
from server.pipeline.tools import plan as tools
from server.pipeline.tools.schema import call_schema

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": ASK, **fields})


def resolve(fmt: str = "llama3_json", **fields):
    return tools.resolve(request(**fields), fmt)


# --- resolution


def test_no_tools_or_tool_choice_none_means_no_tool_calling():
    assert resolve() is None
    assert resolve(tools=[WEATHER], tool_choice="none") is None


def test_auto_is_the_default_with_tools():
    plan = resolve(tools=[WEATHER, TIME])
    assert not plan.forced and plan.schema is None and plan.names == {"get_weather", "get_time"}
    assert plan.template_tools == [WEATHER, TIME]


def test_required_forces_one_call_of_any_declared_function():
    plan = resolve(tools=[WEATHER, TIME], tool_choice="required")
    assert plan.forced
    names = [s["properties"]["name"]["const"] for s in plan.schema["anyOf"]]
    assert names == ["get_weather", "get_time"]
    weather, time = plan.schema["anyOf"]
    assert weather["properties"]["parameters"] == {**WEATHER["function"]["parameters"], "additionalProperties": False}
    assert time["properties"]["parameters"] == {"type": "object", "properties": {}}  # no parameters: takes none
    assert weather["required"] == ["name", "parameters"] and weather["additionalProperties"] is False


def test_named_function_forces_that_function():
    plan = resolve(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert plan.names == {"get_time"}
    assert plan.schema["properties"]["name"] == {"const": "get_time"}
    assert plan.template_tools == [WEATHER, TIME]  # the model still sees every tool


def test_arguments_are_an_object_even_when_the_schema_leaves_the_type_open():
    loose = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert resolve(tools=[loose], tool_choice="required").schema["properties"]["parameters"] == {"type": "object"}


def test_an_explicit_additional_properties_is_kept():
    open_tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": True}}}
    assert call_schema([tools._closed(request(tools=[open_tool]).tools[0])])["properties"]["parameters"][
        "additionalProperties"] is True


def test_parallel_tool_calls_false_allows_one_call():
    assert resolve(tools=[WEATHER]).max_calls is None
    assert resolve(tools=[WEATHER], parallel_tool_calls=False).max_calls == 1
    parser = resolve(tools=[WEATHER], parallel_tool_calls=False).parser()
    text = '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_weather", "parameters": {"city": "B"}}'
    from server.pipeline.tools.parsers import parse

    assert len(parse(parser, text).calls) == 1


def test_format_decides_whether_python_syntax_is_read():
    from server.pipeline.tools.parsers import parse

    text = "[get_weather(city='Oslo')]"
    assert parse(resolve("llama3_json", tools=[WEATHER]).parser(), text).calls == []
    assert [c.name for c in parse(resolve("pythonic", tools=[WEATHER]).parser(), text).calls] == ["get_weather"]
    assert [c.name for c in parse(resolve("llama4_pythonic", tools=[WEATHER]).parser(), text).calls] == ["get_weather"]


@pytest.mark.parametrize("fields,param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "x", "content": "r"}]}, "messages"),
])
def test_misuse_is_rejected(fields, param):
    with pytest.raises(APIError) as info:
        resolve(**fields)
    assert info.value.status == 400 and info.value.param == param


def test_a_result_answers_a_call_made_before_it():
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ok = [*ASK, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1", "content": "r"}]
    tools.check_history(request(messages=ok).messages)
    early = [*ASK, {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "assistant", "tool_calls": [call]}]
    with pytest.raises(APIError):
        tools.check_history(request(messages=early).messages)


# --- messages for templates


def history():
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
             for i, c in enumerate(["Paris", "Lima"])]
    return template_messages(request(messages=[
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
        {"role": "assistant", "content": "done", "tool_calls": []},
        {"role": "developer", "content": "Be brief."},
    ]).messages)


def test_template_messages_carry_calls_with_object_arguments():
    msgs = history()
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert msgs[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c0"}
    assert "tool_calls" not in msgs[3]  # an empty list would trip Meta's templates
    assert msgs[4]["role"] == "system"  # developer is OpenAI's new name for system


def test_llama3_json_gets_one_call_per_assistant_turn():
    split = tools.for_template(history(), "llama3_json")
    assert [len(m.get("tool_calls", ())) for m in split] == [0, 1, 1, 0, 0, 0]
    assert [m["tool_calls"][0]["id"] for m in split[1:3]] == ["c0", "c1"]
    assert tools.for_template(history(), "pythonic") == history()  # pythonic writes several calls in one list


def test_format_detection():
    llama31 = SimpleNamespace(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0})
    llama32 = SimpleNamespace(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 32.0})
    assert detect(llama31, "{{ messages }}") == "llama3_json"
    assert detect(llama32, "{{ messages }}") == "pythonic"
    assert detect(SimpleNamespace(model_type="llama4"), None) == "llama4_pythonic"
    assert detect(llama31, "<|header_start|>{{ m }}<|header_end|>") == "llama4_pythonic"
    assert detect(SimpleNamespace(model_type="llama", rope_scaling=None), None) == "llama3_json"


def test_format_detection_on_real_llama_configs():
    from transformers import LlamaConfig

    def config(factor: float) -> LlamaConfig:  # as in Meta's config.json files
        return LlamaConfig(max_position_embeddings=131072, rope_scaling={
            "factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"})

    assert detect(config(32.0), None) == "pythonic"  # Llama 3.2 1B / 3B
    assert detect(config(8.0), None) == "llama3_json"  # Llama 3.1 8B, 3.3 70B


# --- response shapes


def flavor(**fields) -> render.ChatFlavor:
    return render.ChatFlavor(tools=resolve(tools=[WEATHER, TIME], **fields))


def full(f: render.ChatFlavor, text: str, reason: str = "stop") -> dict:
    return f.full_choice(render.FullChoice(0, text, reason, None))


def test_full_message_with_a_call():
    choice = full(flavor(), 'Sure. {"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] == "Sure."
    [call] = msg["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_full_message_without_a_call_is_content():
    choice = full(flavor(), "Just text.")
    assert choice["message"] == {"role": "assistant", "content": "Just text.", "tool_calls": None}
    assert choice["finish_reason"] == "stop"


def test_a_call_cut_by_max_tokens_finishes_with_length():
    choice = full(flavor(tool_choice="required"), '{"name": "get_weather", "parameters": {"city": "Pa', "length")
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Pa'


def stream(f: render.ChatFlavor, pieces: list[str], index: int = 0) -> list[dict]:
    state = render.ChoiceState()
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out += f.delta_choices(ChoiceDelta(index, piece, [], None, "stop" if last else None), state)
    return out


def test_streamed_deltas_follow_openai():
    text = 'Ok. {"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}'
    deltas = stream(flavor(), list(text))
    assert deltas[0]["delta"] == {"content": "O"}
    content = "".join(d["delta"].get("content", "") for d in deltas)
    assert content == "Ok."
    calls = [tc for d in deltas for tc in d["delta"].get("tool_calls", ())]
    starts = [tc for tc in calls if "id" in tc]
    assert [(tc["index"], tc["type"], tc["function"]["name"], tc["function"]["arguments"]) for tc in starts] == [
        (0, "function", "get_weather", ""), (1, "function", "get_time", "")]
    args = {i: "".join(tc["function"]["arguments"] for tc in calls if tc["index"] == i and "id" not in tc) for i in (0, 1)}
    assert args == {0: '{"city": "Paris"}', 1: "{}"}
    assert all(set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"} for tc in calls if "id" not in tc)
    assert [d["finish_reason"] for d in deltas] == [None] * (len(deltas) - 1) + ["tool_calls"]


def test_forced_stream_sends_arguments_as_generated():
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    deltas = stream(flavor(tool_choice="required"), list(text))
    fragments = [d["delta"]["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d["delta"]]
    assert fragments[0] == "" and len(fragments) > 5  # one per generated piece, not one at the end
    assert "".join(fragments) == '{"city": "Paris"}'
    assert deltas[-1] == {"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}


def test_logprobs_of_held_back_tokens_travel_with_the_next_chunk():
    from engine.outputs import TokenLogprob

    f = render.ChatFlavor(top_k=0, tools=resolve(tools=[WEATHER]))
    state = render.ChoiceState()
    lp = lambda t: [TokenLogprob(t, 1, -0.5, [])]  # noqa: E731
    assert f.delta_choices(ChoiceDelta(0, "{", [1], lp("{")), state) == []  # held: it may open a call
    [out] = f.delta_choices(ChoiceDelta(0, "x", [2], lp("x")), state)
    assert out["delta"] == {"content": "{x"}
    assert [t["token"] for t in out["logprobs"]["content"]] == ["{", "x"]


def test_plain_flavor_keeps_its_one_delta_per_step():
    plain = render.ChatFlavor()
    assert plain.plain_text_deltas and not flavor().plain_text_deltas
    assert plain.delta_choices(ChoiceDelta(0, "{", [], None), render.ChoiceState()) == [
        {"index": 0, "delta": {"content": "{"}, "finish_reason": None, "logprobs": None}]


def test_chunk_groups_hold_each_choice_once():
    a0, a1, b0 = ({"index": 0, "k": 1}, {"index": 0, "k": 2}, {"index": 1, "k": 3})
    assert render.chunk_groups([a0, b0, a1]) == [[a0, b0], [a1]]
    assert render.chunk_groups([]) == []


# --- prepare_chat: what reaches the template and the engine (a recording engine, no vLLM)


class RecordingEngine:
    def __init__(self, tool_call_format: str = "llama3_json"):
        self.info = SimpleNamespace(name="m", path="m", is_chat=True, max_model_len=1024,
                                    tool_call_format=tool_call_format)
        self.calls: list[tuple] = []

    async def encode_chat(self, messages, max_chars=None, tools=None):
        self.calls.append((messages, tools))
        return [1, 2, 3]


def prepare(engine, settings_fields=None, **fields):
    import asyncio

    from server.observe.exchange import Exchange
    from server.pipeline.generation import prepare_chat
    from server.protection.limits import Limits
    from server.settings import Settings

    settings = Settings(**(settings_fields or {}))
    gate = Limits(settings).admission_for(Exchange("rid", "POST", "/v1/chat/completions", "127.0.0.1"))
    return asyncio.run(prepare_chat(request(**fields), engine, settings, gate))


def test_the_tool_call_format_setting_overrides_the_models(clean_env):
    assert prepare(RecordingEngine("pythonic"), tools=[WEATHER]).flavor.tools.format == "pythonic"
    job = prepare(RecordingEngine("pythonic"), {"tool_call_format": "llama3_json"}, tools=[WEATHER])
    assert job.flavor.tools.format == "llama3_json"


def test_prepare_gives_the_template_the_tools_and_split_history(clean_env):
    engine = RecordingEngine()
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}} for i in (0, 1)]
    job = prepare(engine, tools=[WEATHER], messages=[*ASK, {"role": "assistant", "tool_calls": calls}])
    messages, given_tools = engine.calls[-1]
    assert given_tools == [WEATHER]
    assert [len(m.get("tool_calls", ())) for m in messages] == [0, 1, 1]
    assert job.engine_input.structured_output is None  # auto: the model is free
    prepare(engine, tools=[WEATHER], tool_choice="none")
    assert engine.calls[-1][1] is None  # none: the model is not shown the tools
    forced = prepare(engine, tools=[WEATHER], tool_choice="required")
    assert "get_weather" in forced.engine_input.structured_output.grammar


class ScriptedEngine(RecordingEngine):
    """Streams a fixed answer, one piece per engine step, for each choice."""

    def __init__(self, pieces: list[str], **kw):
        super().__init__(**kw)
        self.pieces = pieces

    async def stream(self, prompt_ids, plan, request_id):
        from engine.outputs import PromptInfo, Step

        for i, piece in enumerate(self.pieces):
            last = i == len(self.pieces) - 1
            choices = [ChoiceDelta(k, piece, [i], None, "stop" if last else None) for k in range(plan.n)]
            yield Step(choices, PromptInfo(prompt_ids), (i + 1) * plan.n, last)


def frames(engine, **fields) -> list[dict]:
    import asyncio

    from server.pipeline.respond import _frames

    job = prepare(engine, stream=True, **fields)

    async def read():
        return b"".join([f async for f in _frames(job, engine)])

    raw = asyncio.run(read()).decode()
    blocks = [b[len("data: "):] for b in raw.split("\n\n") if b]
    assert blocks[-1] == "[DONE]"
    return [json.loads(b) for b in blocks[:-1]]


def test_auto_stream_through_the_framing(clean_env):
    text = 'Let me see. {"name": "get_weather", "parameters": {"city": "Paris"}}'
    events = frames(ScriptedEngine([text[i:i + 3] for i in range(0, len(text), 3)]), tools=[WEATHER], n=2)
    for index in (0, 1):
        mine = [c for e in events for c in e["choices"] if c["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content") or "" for c in mine) == "Let me see."
        calls = [tc for c in mine for tc in c["delta"].get("tool_calls", ())]
        assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[0]["id"]
        assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city": "Paris"}'
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["tool_calls"]
    assert all(len({c["index"] for c in e["choices"]}) == len(e["choices"]) for e in events)
    assert events[-1]["usage"]["completion_tokens"] > 0 and all("usage" not in e for e in events[:-1])


def test_plain_stream_is_unchanged_by_tools_support(clean_env):
    events = frames(ScriptedEngine(["{", '"a": 1}']))
    assert [e["choices"][0]["delta"] for e in events] == [{"role": "assistant", "content": ""}, {"content": "{"},
                                                         {"content": '"a": 1}'}]

"""Bounded work per request, input ranges the engine survives, small and honest errors: in-process, on a
scripted engine (tests/scripted_engine.py), so each rule is checked without vLLM."""

from __future__ import annotations

import asyncio
import json
import logging

import orjson
import pytest

from engine.errors import EngineFailure, EngineUnavailable
from schemas import CompletionRequest
from server.protection.deadlines import Deadline
from server.errors import APIError
from server.observe.exchange import Exchange
from server.pipeline.generation import prepare_completion
from server.protection.limits import Admission, Limits
from tests.probes import metric
from tests.scripted_engine import InProcess, ScriptedEngine, settings

MSG = [{"role": "user", "content": "hi"}]


def run(coro):
    return asyncio.run(coro)


async def _post(path: str, body, engine: ScriptedEngine | None = None, **cfg):
    engine = engine or ScriptedEngine()
    async with InProcess(engine, settings(**cfg)) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post(path, content=content, headers={"content-type": "application/json"}), engine


def post(path: str, body, engine: ScriptedEngine | None = None, **cfg):
    return run(_post(path, body, engine, **cfg))


def _error(resp, status: int, param: str | None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text[:500]
    err = resp.json()["error"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


# --- 5. one request, bounded work


def test_a_prompt_list_over_the_cap_starts_no_engine_request():
    resp, engine = post("/v1/completions", {"prompt": ["hi"] * 4000, "max_tokens": 1})
    err = _error(resp, 400, "prompt", "too_many_prompts")
    assert "4000" in err["message"] and "64" in err["message"]
    assert engine.started == []


def test_prompts_up_to_the_cap_run_one_engine_request_each():
    resp, engine = post("/v1/completions", {"prompt": ["hi"] * 64, "max_tokens": 1})
    assert resp.status_code == 200 and len(resp.json()["choices"]) == 64
    assert len(engine.started) == 64


def test_a_long_token_id_list_is_one_prompt_not_many():
    resp, engine = post("/v1/completions", {"prompt": list(range(5, 1000)) * 5, "max_tokens": 1})
    assert resp.status_code == 200, resp.text
    assert len(engine.started) == 1


def test_prompts_times_candidates_is_capped_before_any_engine_request():
    body = {"prompt": ["a", "b", "c", "d", "e"], "n": 4, "best_of": 16, "temperature": 1.0, "max_tokens": 1}
    resp, engine = post("/v1/completions", body)
    err = _error(resp, 400, "prompt", "too_many_sequences")
    assert "80" in err["message"]
    assert engine.started == []
    resp, engine = post("/v1/completions", {**body, "prompt": ["a", "b", "c", "d"]})  # 4 x 16 = 64: fits
    assert resp.status_code == 200, resp.text


def test_the_sequence_cap_is_a_setting():
    resp, _ = post("/v1/chat/completions", {"messages": MSG, "n": 3, "temperature": 1.0}, max_sequences_per_request=2)
    _error(resp, 400, "n", "too_many_sequences")


def test_the_token_reservation_counts_every_prompt_and_candidate():
    prompts = [[1, 2], [3, 4, 5], [6]]
    req = CompletionRequest.model_validate({"prompt": prompts, "max_tokens": 10, "n": 3, "temperature": 1})
    cfg = settings(rate_limit_tpm=120)  # refills 2 tokens a second: none while this runs in well under 0.5 s
    exchange = Exchange("rid", "POST", "/v1/completions", "127.0.0.1")

    async def main() -> None:
        await prepare_completion(req, ScriptedEngine(), cfg, Limits(cfg).admission_for(exchange))

    run(main())
    reserved = 120 - int(dict(exchange.response_headers)[b"x-ratelimit-remaining-tokens"])
    assert reserved == 6 + 10 * 3 * 3


# --- 6. input ranges the engine survives


@pytest.mark.parametrize(("field", "value"), [
    ("seed", 2**63), ("seed", 2**64 - 1),
    ("length_penalty", 1e308), ("length_penalty", -1e308), ("length_penalty", 10.5),
])
def test_out_of_range_numbers_are_refused(field, value):
    resp, engine = post("/v1/completions", {"prompt": "x", "max_tokens": 1, field: value})
    _error(resp, 400, field)
    assert engine.started == []


@pytest.mark.parametrize(("field", "value"), [("seed", 2**63 - 1), ("seed", -(2**63)), ("length_penalty", -10.0)])
def test_the_edges_of_the_ranges_are_accepted(field, value):
    resp, _ = post("/v1/completions", {"prompt": "x", "max_tokens": 1, field: value})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("key", ["+5", " 5", "5 ", "05", "5.0", "\u0665", "-1", "1e3", "", "0x5", "99999999999"])
def test_logit_bias_keys_must_be_canonical_decimal_token_ids(key):
    resp, _ = post("/v1/completions", {"prompt": "x", "max_tokens": 1, "logit_bias": {key: 1}})
    _error(resp, 400, "logit_bias")


def test_canonical_logit_bias_keys_are_accepted():
    resp, _ = post("/v1/completions", {"prompt": "x", "max_tokens": 1, "logit_bias": {"0": 1, "5": -1, "999": 2}})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("form", [{"top_logprobs": 10000}, {"logprobs": False, "top_logprobs": 10000},
                                  {"logprobs": None, "top_logprobs": 2}, {"logprobs": 3, "top_logprobs": 2},
                                  {"logprobs": True, "top_logprobs": 21}])
def test_top_logprobs_is_refused_unless_logprobs_is_true_and_it_is_within_the_cap(form):
    resp, engine = post("/v1/chat/completions", {"messages": MSG, "max_tokens": 1, **form})
    _error(resp, 400, "top_logprobs")
    assert engine.started == []


# --- 7. errors stay small and honest


def test_many_validation_errors_give_a_small_response_with_a_count():
    bad = [{"role": 5, "content": 5, "name": 5, "extra": 1}] * 2000  # within max_chat_messages
    resp, _ = post("/v1/chat/completions", {"messages": bad})
    assert resp.status_code == 400
    assert len(resp.content) < 10_000, len(resp.content)
    body = resp.json()
    assert len(body["detail"]) == 10
    assert "more; the first 10 are in detail" in body["error"]["message"]


def test_the_echoed_input_of_a_validation_error_is_cut():
    from pydantic import ValidationError

    from schemas import CompletionRequest
    from server.errors import from_pydantic

    with pytest.raises(ValidationError) as caught:
        CompletionRequest.model_validate({"prompt": [1, "a"] * 50_000})
    err = from_pydantic(caught.value)
    assert len(orjson.dumps(err.detail)) < 5_000
    assert "(and 200000 more" in err.message


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_failure_is_a_500_not_a_400(stream):
    engine = ScriptedEngine(fail_with=EngineFailure("the engine failed to process the request"))
    resp, _ = post("/v1/chat/completions", {"messages": MSG, "max_tokens": 2, "stream": stream}, engine)
    if stream:
        assert resp.status_code == 200
        event = orjson.loads(resp.text.split("\n\n")[-3].removeprefix("data: "))
        assert event["error"]["status"] == 500 and event["error"]["code"] == "engine_error"
        assert resp.text.rstrip().endswith("data: [DONE]")
    else:
        err = _error(resp, 500, None, "engine_error")
        assert err["message"] and err["type"] == "server_error"


def test_a_full_engine_queue_is_a_503_with_retry_after():
    engine = ScriptedEngine(fail_with=EngineFailure("The engine is currently busy", busy=True))
    resp, _ = post("/v1/completions", {"prompt": "x", "max_tokens": 2}, engine)
    _error(resp, 503, None, "engine_overloaded")
    assert resp.headers["retry-after"] == "1"


def test_vllm_failures_are_sorted_into_the_callers_and_the_servers():
    from vllm.exceptions import QueueOverflowError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    from engine.core import engine_failure
    from engine.errors import InvalidGenerationRequest

    assert isinstance(engine_failure(VLLMValidationError("bad", parameter="x"), False), InvalidGenerationRequest)
    assert isinstance(engine_failure(ValueError("prompt too long"), False), InvalidGenerationRequest)
    generate = engine_failure(EngineGenerateError(), False)
    assert isinstance(generate, EngineFailure) and not generate.busy and generate.message
    assert engine_failure(QueueOverflowError(), False).busy
    assert isinstance(engine_failure(EngineDeadError(), False), EngineUnavailable)
    assert isinstance(engine_failure(VLLMValidationError("bad"), True), EngineUnavailable)


def test_a_waiter_that_times_out_as_its_slot_is_released_gets_a_clean_504():
    """The race: the deadline cancels a queued waiter, and before the waiter runs again a release() drops the
    cancelled future from the queue. asyncio runs ready callbacks in order, so this interleaving is exact."""

    async def main():
        admission = Admission(limit=1, queue_limit=4)
        await admission.acquire()  # the one slot is taken
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop.time() + 60, 60, 5.0)
        waiter = asyncio.create_task(deadline.within(admission.acquire()))
        await asyncio.sleep(0)
        fut = admission._waiters[0]
        deadline.expire("timeout")  # the deadline passes: its timer cancels the waiter on the next loop pass
        for _ in range(100):
            if fut.cancelled():
                break
            await asyncio.sleep(0)
        assert fut.cancelled() and not waiter.done()
        admission.release()  # the slot is released before the waiter has run its clean-up
        with pytest.raises(APIError) as caught:
            await waiter
        assert caught.value.status == 504 and caught.value.code == "timeout"
        assert admission.running == 0 and admission.waiting == 0
        await admission.acquire()  # the slot is free again, and only once
        assert admission.running == 1

    run(main())


def _scope(path: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
            "raw_path": path.encode(), "query_string": b"", "headers": [(b"content-type", b"application/json")],
            "client": ("10.0.0.1", 5), "server": ("test", 80), "scheme": "http", "root_path": ""}


async def _leave(app, path: str, messages: list[dict], leave_after_s: float) -> None:
    """Calls the app as uvicorn would, with a client that disconnects after `leave_after_s`."""
    gone = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(_message):
        pass

    task = asyncio.create_task(app(_scope(path), receive, send))
    await asyncio.sleep(leave_after_s)
    gone.set()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("case", ["during generation", "during a stream", "mid-body"])
def test_a_client_that_disconnects_is_logged_and_counted_as_499(case, caplog):
    body = {"prompt": "x", "max_tokens": 200, "stream": case == "during a stream"}
    if case == "mid-body":
        messages = [{"type": "http.request", "body": orjson.dumps(body)[:5], "more_body": True}]
    else:
        messages = [{"type": "http.request", "body": orjson.dumps(body), "more_body": False}]

    async def main():
        engine = ScriptedEngine(step_s=0.02)
        server = InProcess(engine)
        async with server as client:
            with caplog.at_level(logging.INFO, logger="llamaserve.access"):
                await _leave(server.app, "/v1/completions", messages, 0.2)
            text = (await client.get("/metrics")).text
        if case != "mid-body":
            assert engine.aborted  # the engine request was aborted
        return text

    text = run(main())
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llamaserve.access"]
    assert [line["status"] for line in lines if line["path"] == "/v1/completions"] == [499]
    assert metric(text, "llamaserve_requests_total", status="499") == 1
    assert metric(text, "llamaserve_requests_total", status="500") is None


# --- 4. bounded work before it is done, and tokenize admitted


def test_too_many_messages_are_refused_before_validation():
    resp, engine = post("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}] * 3000})
    _error(resp, 400, "messages", "too_many_messages")
    resp, _ = post("/tokenize", {"messages": [{"role": "user", "content": ""}] * 3000})
    _error(resp, 400, "messages", "too_many_messages")
    assert engine.started == []


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "x" * 1001}, "prompt"),
    ("/v1/completions", {"prompt": ["x" * 600, "y" * 600]}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 1001}]}, "messages"),
    ("/tokenize", {"prompt": "x" * 1001}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x" * 600}] * 2}, "messages"),
])
def test_prompt_text_over_the_limit_is_refused_before_tokenising(path, body, param):
    resp, engine = post(path, body, max_prompt_chars=1000)
    _error(resp, 400, param, "prompt_too_large")
    assert engine.started == []


def test_tokenize_takes_an_admission_slot():
    async def main():
        engine = ScriptedEngine(step_s=0.05)
        cfg = settings(max_concurrent_requests=1, max_queued_requests=0)
        async with InProcess(engine, cfg) as client:
            long = asyncio.create_task(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 40}))
            while not engine.started:
                await asyncio.sleep(0.01)
            busy = [await client.post(p, json=b) for p, b in (("/tokenize", {"prompt": "x"}),
                                                             ("/detokenize", {"tokens": [104]}))]
            assert (await long).status_code == 200
            free = await client.post("/tokenize", json={"prompt": "x"})
        return busy, free

    busy, free = run(main())
    for resp in busy:
        _error(resp, 429, None, "overloaded")
    assert free.status_code == 200 and free.json()["count"] == 1


def test_tokenize_is_rate_limited():
    async def main():
        cfg = settings(rate_limit_rpm=2)
        async with InProcess(ScriptedEngine(), cfg) as client:
            return [(await client.post("/tokenize", json={"prompt": "x"})) for _ in range(3)]

    first, second, third = run(main())
    assert first.status_code == second.status_code == 200
    _error(third, 429, None, "rate_limit_exceeded")
    assert "x-ratelimit-remaining-requests" in first.headers


# --- nesting: refused with a 400 before anything recurses into it

DEEP = 100_000


def _deep_parameters(levels: int) -> str:
    """An object schema whose one property is an array of arrays `levels` deep, as JSON text (json.dumps
    itself recurses too deep for it)."""
    return '{"type": "object", "properties": {"a": ' + '{"type": "array", "items": ' * levels + "{}" + "}" * levels + "}}"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions", "/tokenize"])
def test_tool_call_arguments_nested_too_deep_in_the_history_are_a_400(path):
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                           "arguments": "[" * DEEP + "]" * DEEP}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    resp, engine = post(path, {"messages": messages})
    assert resp.status_code == 400, resp.text[:300]
    assert "nest deeper than 64" in resp.json()["error"]["message"]
    assert engine.started == []


@pytest.mark.parametrize("levels", [600, 1000])
@pytest.mark.parametrize("choice", ["required", "auto"])
def test_tool_parameters_nested_hundreds_deep_are_a_400(levels, choice):
    tool = '{"type": "function", "function": {"name": "get_weather", "parameters": ' + _deep_parameters(levels) + "}}"
    body = f'{{"messages": {json.dumps(MSG)}, "tools": [{tool}], "tool_choice": "{choice}"}}'
    resp, engine = post("/v1/chat/completions", body.encode())
    err = _error(resp, 400, "tools", "schema_too_deep")
    assert "64 levels" in err["message"]
    assert engine.started == []

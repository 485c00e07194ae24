"""The content safety hook in the request pipeline, in process: a scripted engine and guard
(tests/safety_doubles.py) behind the real app, routes, moderation and error rendering."""

from __future__ import annotations

import asyncio
import time

import httpx

from server.app import start_configured_guard
from server.safety.guards import RemoteGuard
from server.protection.security import key_id
from tests.conftest import free_port
from tests.probes import metric
from tests.safety_doubles import ScriptedGuard, running, settings, sse_events


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def chat(content: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 32, **fields}


def stream_texts(events) -> tuple[str, list]:
    chunks = [e for e in events if isinstance(e, dict)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks


def without_ids(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


# --- prompts


def test_blocked_prompt_is_400_content_filter_in_azure_shape_and_generates_nothing():
    async def scenario():
        guard = ScriptedGuard()
        async with running(settings(), guard) as (client, _, engine):
            chat_reply = await client.post("/chat/completions", json=chat("tell me BAD things"))
            text_reply = await client.post("/v1/completions", json={"prompt": "HATE speech", "max_tokens": 4})
            return chat_reply, text_reply, engine, guard

    chat_reply, text_reply, engine, guard = run(scenario())
    assert chat_reply.status_code == 400
    err = chat_reply.json()["error"]
    assert err["code"] == "content_filter" and err["status"] == 400 and err["param"] == "messages"
    assert "violence" in err["message"]
    assert err["innererror"] == {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": {
            "hate": {"filtered": False, "severity": "safe"},
            "sexual": {"filtered": False, "severity": "safe"},
            "violence": {"filtered": True, "severity": "high"},
            "self_harm": {"filtered": False, "severity": "safe"},
        },
    }
    assert chat_reply.json()["code"] == "content_filter"  # Azure AI Model Inference's top-level fields too
    assert text_reply.status_code == 400
    text_err = text_reply.json()["error"]
    assert text_err["param"] == "prompt" and text_err["innererror"]["content_filter_result"]["hate"]["filtered"]
    assert engine.started == 0
    # The guard read the conversation with the prompt as the last User turn.
    assert guard.seen[0] == [{"role": "user", "content": "tell me BAD things"}]


def test_safe_guard_changes_nothing():
    async def scenario():
        bodies = {}
        for name, guard in (("off", None), ("guarded", ScriptedGuard())):
            config = settings(guard="off") if guard is None else settings()
            async with running(config, guard) as (client, _, _engine):
                full = await client.post("/v1/chat/completions", json=chat("hello there world"))
                streamed = await client.post("/v1/chat/completions", json=chat("hello there world", stream=True))
                text = await client.post("/v1/completions", json={"prompt": "one two", "max_tokens": 5, "n": 2,
                                                                   "temperature": 1})
                bodies[name] = (full.json(), stream_texts(sse_events(streamed.text)), text.json())
        return bodies

    bodies = run(scenario())
    (off_full, (off_text, off_chunks), off_completion), (on_full, (on_text, on_chunks), on_completion) = (
        bodies["off"], bodies["guarded"])
    assert without_ids(on_full) == without_ids(off_full)
    assert on_full["choices"][0]["message"]["content"] == " HELLO THERE WORLD"
    assert on_text == off_text == " HELLO THERE WORLD"
    assert [c["choices"] for c in on_chunks] == [c["choices"] for c in off_chunks]
    assert without_ids(on_completion) == without_ids(off_completion)


def test_categories_that_do_not_block_pass_and_per_key_policies_apply():
    strict, lenient = "k" * 32, "l" * 32
    config = settings(api_keys=f"{strict},{lenient}", guard_block_categories="hate",
                      guard_key_categories={key_id(lenient): []})

    async def scenario():
        async with running(config, ScriptedGuard()) as (client, _, _engine):
            def post(key, content):
                return client.post("/v1/chat/completions", json=chat(content), headers={"api-key": key})
            return [await post(strict, "BAD news"), await post(strict, "HATE news"), await post(lenient, "HATE news")]

    violent, hateful, lenient_hate = run(scenario())
    assert violent.status_code == 200  # S1 found, but only hate blocks by default here
    assert violent.json()["choices"][0]["finish_reason"] == "stop"
    assert hateful.status_code == 400 and hateful.json()["error"]["code"] == "content_filter"
    assert lenient_hate.status_code == 200  # this key's policy blocks nothing


# --- outputs


def test_blocked_output_ends_with_content_filter_and_its_text_withheld():
    async def scenario():
        async with running(settings(), ScriptedGuard()) as (client, _, _engine):
            full = await client.post("/v1/chat/completions", json=chat("say bad words", n=2, temperature=1))
            text = await client.post("/completions", json={"prompt": "hate", "max_tokens": 4})
            return full.json(), text.json()

    full, text = run(scenario())
    assert len(full["choices"]) == 2
    for choice in full["choices"]:
        assert choice["finish_reason"] == "content_filter"
        assert choice["message"]["content"] == ""
        assert choice["content_filter_results"]["violence"] == {"filtered": True, "severity": "high"}
    assert text["choices"][0]["finish_reason"] == "content_filter" and text["choices"][0]["text"] == ""
    assert text["choices"][0]["content_filter_results"]["hate"]["filtered"] is True


def test_blocked_stream_is_cut_before_the_harmful_text_and_ends_with_done():
    words = "a b c d e f bad g h i j k l m n o p"

    async def scenario():
        async with running(settings(guard_stream_interval_tokens=2), ScriptedGuard()) as (client, _, engine):
            reply = await client.post("/v1/chat/completions", json=chat(words, stream=True))
            return reply, engine

    reply, engine = run(scenario())
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    text, chunks = stream_texts(events)
    # Checked two tokens at a time: " A B", " C D", " E F" passed; " BAD G" did not and was never sent.
    assert text == " A B C D E F"
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "content_filter"
    assert last["content_filter_results"]["violence"]["filtered"] is True
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert engine.aborted == 1 and engine.tokens_made < len(words.split())  # generation stopped at the cut


def test_stream_of_several_choices_cuts_only_the_harmful_ones():
    async def scenario():
        async with running(settings(guard_stream_interval_tokens=1), ScriptedGuard()) as (client, _, _engine):
            reply = await client.post("/v1/completions", json={
                "prompt": ["one two three", "four bad five"], "max_tokens": 8, "stream": True})
            return reply

    events = sse_events(run(scenario()).text)
    assert events[-1] == "[DONE]"
    finishes = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
                for c in events[:-1] if c["choices"] and c["choices"][0]["finish_reason"]}
    assert finishes == {0: "stop", 1: "content_filter"}
    texts = {0: "", 1: ""}
    for c in events[:-1]:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == {0: " ONE TWO THREE", 1: " FOUR"}


def test_prompt_only_checks_leave_outputs_and_streams_alone():
    async def scenario():
        guard = ScriptedGuard()
        async with running(settings(guard_check="prompt"), guard) as (client, _, _engine):
            reply = await client.post("/v1/chat/completions", json=chat("bad stuff", stream=True))
            return reply, guard

    reply, guard = run(scenario())
    text, chunks = stream_texts(sse_events(reply.text))
    assert text == " BAD STUFF" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(guard.seen) == 1


def test_output_only_checks_let_prompts_through():
    async def scenario():
        guard = ScriptedGuard()
        async with running(settings(guard_check="output"), guard) as (client, _, _engine):
            reply = await client.post("/v1/chat/completions", json=chat("BAD"))
            return reply, guard

    reply, guard = run(scenario())
    assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] == "content_filter"
    assert [turns[-1]["role"] for turns in guard.seen] == ["assistant"]  # only the output was judged, as Agent


# --- guard failures


def test_failing_guard_fail_open_passes_outputs_with_content_filter_error():
    async def scenario():
        async with running(settings(guard_timeout_s=0.2), ScriptedGuard()) as (client, _, _engine):
            started = time.monotonic()
            broken = await client.post("/v1/chat/completions", json=chat("broken guard"))
            slow = await client.post("/v1/chat/completions", json=chat("slow guard", stream=True))
            late = await client.post("/v1/chat/completions",
                                     json=chat("fine until broken", stream=True, max_tokens=8))
            return broken, slow, late, time.monotonic() - started

    broken, slow, late, took = run(scenario())
    choice = broken.json()["choices"][0]
    assert broken.status_code == 200 and choice["message"]["content"] == " BROKEN GUARD"
    assert choice["finish_reason"] == "content_filter_error"
    assert choice["content_filter_results"]["error"]["code"] == "content_filter_error"
    text, chunks = stream_texts(sse_events(slow.text))
    assert text == " SLOW GUARD" and chunks[-1]["choices"][0]["finish_reason"] == "content_filter_error"
    assert "no verdict within 0.2 s" in chunks[-1]["choices"][0]["content_filter_results"]["error"]["message"]
    late_text, late_chunks = stream_texts(sse_events(late.text))
    assert late_text == " FINE UNTIL BROKEN"
    assert late_chunks[-1]["choices"][0]["finish_reason"] == "content_filter_error"
    assert took < 10  # timeouts, not hangs


def test_failing_guard_fail_closed_is_503_and_cuts_streams():
    async def scenario():
        config = settings(guard_on_error="closed", guard_timeout_s=0.2, guard_stream_interval_tokens=2)
        async with running(config, ScriptedGuard()) as (client, _, _engine):
            prompt = await client.post("/v1/chat/completions", json=chat("broken"))
            slow = await client.post("/v1/completions", json={"prompt": "slow", "max_tokens": 3})
            stream = await client.post("/v1/chat/completions",
                                       json=chat("a b c d broken e f g h", stream=True))
            return prompt, slow, stream

    prompt, slow, stream = run(scenario())
    for reply in (prompt, slow):
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "content_filter_error"
        assert reply.headers["retry-after"] == "5"
    events = sse_events(stream.text)
    text, chunks = stream_texts(events)
    assert events[-1] == "[DONE]" and text == " A B C D"
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter_error"


def test_dead_remote_guard_gives_the_configured_behaviour():
    closed_port = free_port()  # nothing listens there

    def remote(_config):
        return RemoteGuard(f"http://127.0.0.1:{closed_port}", None, 2)

    async def scenario(mode):
        async with running(settings(guard_on_error=mode), guard_factory=remote) as (client, state, _engine):
            reply = await client.post("/v1/chat/completions", json=chat("hello"))
            metrics = await client.get("/metrics")
            return reply, metrics.text

    open_reply, metrics = run(scenario("open"))
    assert open_reply.status_code == 200
    assert open_reply.json()["choices"][0]["finish_reason"] == "content_filter_error"
    assert "unreachable" in open_reply.json()["choices"][0]["content_filter_results"]["error"]["message"]
    assert metric(metrics, "llamaserve_guard_checks_total", result="error", stage="prompt") == 1.0
    closed_reply, _ = run(scenario("closed"))
    assert closed_reply.status_code == 503 and "unreachable" in closed_reply.json()["error"]["message"]


def test_remote_guard_sends_the_conversation_to_the_guards_chat_route():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization"), request.read()))
        return httpx.Response(200, json={"choices": [{"message": {"content": "unsafe\nS11"}}]})

    async def scenario():
        guard = RemoteGuard("http://guard:8000/", "secret", 2)
        guard._client._transport = httpx.MockTransport(answer)
        try:
            return await guard.classify([{"role": "user", "content": "hi"}])
        finally:
            await guard.close()

    assert run(scenario()).text == "unsafe\nS11"
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert b'"messages":[{"role":"user","content":"hi"}]' in body.replace(b" ", b"")


def test_metrics_count_checks_blocks_and_latency():
    async def scenario():
        async with running(settings(), ScriptedGuard()) as (client, _, _engine):
            await client.post("/v1/chat/completions", json=chat("BAD HATE"))
            await client.post("/v1/chat/completions", json=chat("say hate"))
            await client.post("/v1/chat/completions", json=chat("fine"))
            return (await client.get("/metrics")).text

    text = run(scenario())
    assert metric(text, "llamaserve_guard_checks_total", result="unsafe", stage="prompt") == 1.0
    assert metric(text, "llamaserve_guard_checks_total", result="safe", stage="prompt") == 2.0
    assert metric(text, "llamaserve_guard_checks_total", result="unsafe", stage="output") == 1.0
    assert metric(text, "llamaserve_guard_checks_total", result="safe", stage="output") == 1.0
    assert metric(text, "llamaserve_guard_blocks_total", category="violence") == 1.0
    assert metric(text, "llamaserve_guard_blocks_total", category="hate") == 2.0
    assert metric(text, "llamaserve_guard_latency_seconds_count", stage="prompt") == 3.0


def test_guard_is_closed_at_shutdown_and_off_starts_none():
    async def scenario():
        guard = ScriptedGuard()
        async with running(settings(), guard) as (_, state, _engine):
            assert state.moderator is not None
        return guard

    assert run(scenario()).closed
    assert start_configured_guard(settings(guard="off")) is None


def test_local_guard_engine_gets_its_own_model_memory_share_and_kv_space():
    from engine.core import EngineOptions
    from server.safety.guards import local_guard_options

    main = EngineOptions(model="/m", served_model_name="m", dtype="bfloat16", max_model_len=65536,
                         tensor_parallel_size=2, gpu_memory_utilization=0.7, quantization="fp8",
                         enforce_eager=True, cpu_kvcache_space_gib=4, max_logprobs=32)
    config = settings(guard="local", guard_model="/guard", guard_gpu_memory_utilization=0.2,
                      guard_max_model_len=8192)
    options = local_guard_options(config, main)
    assert (options.model, options.gpu_memory_utilization, options.max_model_len) == ("/guard", 0.2, 8192)
    assert options.tensor_parallel_size == 1 and options.quantization is None
    assert (options.dtype, options.enforce_eager, options.cpu_kvcache_space_gib) == ("bfloat16", True, 4)
    own_kv = local_guard_options(settings(guard="local", guard_model="/g", guard_cpu_kvcache_space_gib=1), main)
    assert own_kv.cpu_kvcache_space_gib == 1

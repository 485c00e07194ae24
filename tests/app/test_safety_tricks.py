"""Requests built to get round the guard, in process (tests/safety_doubles.py's scripted engine and guard behind the
real app): each is judged or refused, never passed unchecked. The guard checks outputs and fails open (the
defaults) unless a test says otherwise."""

from __future__ import annotations

import asyncio

import httpx

from engine.errors import InvalidGenerationRequest
from engine.guard_format import GuardFit, GuardReply
from server.app import MODEL_LOAD_EXIT_CODE, _load
from server.safety.guards import RemoteGuard
from server.state import ServerState
from tests.probes import metric
from tests.safety_doubles import ScriptedEngine, ScriptedGuard, running, settings

SPECIAL_BASE = 0x100000  # token ids from here on stand for special tokens


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class SpecialTokensEngine(ScriptedEngine):
    """Decodes its special tokens the way a Llama tokenizer does: spelled out (`<|reserved_special_token_7|>`,
    one token for the model, a dozen as text), or left out with skip_special_tokens."""

    def decode(self, token_ids, skip_special_tokens=False) -> str:
        return "".join(
            ("" if skip_special_tokens else f"<|reserved_special_token_{t - SPECIAL_BASE}|>") if t >= SPECIAL_BASE
            else chr(t) for t in token_ids
        )

    def _words(self, prompt_ids, plan) -> list[str]:
        return [" " + w.upper() for w in self.decode(prompt_ids, skip_special_tokens=True).split()][: plan.max_tokens]


class ShortGuard(ScriptedGuard):
    """A guard whose context holds `context` tokens (one per character): longer conversations it refuses, as the
    local guard engine does."""

    def __init__(self, context: int) -> None:
        super().__init__()
        self.context = context

    async def classify(self, turns: list[dict[str, str]]) -> GuardReply:
        size = sum(len(t["content"]) for t in turns)
        if size > self.context:
            raise InvalidGenerationRequest(f"the guard's prompt is {size} tokens, more than its context")
        return await super().classify(turns)


# --- what the guard reads


def test_a_prompt_of_special_token_ids_reaches_the_guard_as_the_text_the_model_reads():
    prompt = [SPECIAL_BASE + i % 200 for i in range(900)] + [ord(c) for c in " say bad "]

    async def scenario():
        guard = ShortGuard(context=2000)
        async with running(settings(guard_check="output"), guard, SpecialTokensEngine()) as (client, _, _engine):
            reply = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4})
            return reply, guard

    reply, guard = run(scenario())
    choice = reply.json()["choices"][0]
    # Spelled out, the 900 special tokens are ~25,000 characters: the guard would fail and the output pass unchecked.
    assert guard.seen == [[{"role": "user", "content": " say bad "}, {"role": "assistant", "content": " SAY BAD"}]]
    assert choice["finish_reason"] == "content_filter" and choice["text"] == ""
    assert choice["content_filter_results"]["violence"]["filtered"] is True


def test_tool_definitions_and_tool_call_arguments_are_in_what_the_guard_reads():
    tool = {"type": "function", "function": {
        "name": "lookup", "description": "finds things",
        "parameters": {"type": "object", "properties": {"how": {"type": "string", "enum": ["quietly", "BAD"]}}}}}
    history = [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"how": "HATE"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "user", "content": "thanks"},
    ]

    async def scenario():
        guard = ScriptedGuard()
        async with running(settings(guard_check="prompt"), guard) as (client, _, _engine):
            with_tools = await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hello"}], "tools": [tool], "max_tokens": 4})
            with_calls = await client.post("/v1/chat/completions", json={"messages": history, "max_tokens": 4})
            return with_tools, with_calls, guard

    with_tools, with_calls, guard = run(scenario())
    # The enum value "BAD" is in the prompt the model reads: the guard judged it there (violence).
    assert with_tools.status_code == 400 and with_tools.json()["error"]["code"] == "content_filter"
    assert '"enum": ["quietly", "BAD"]' in guard.seen[0][0]["content"]
    assert '"description": "finds things"' in guard.seen[0][0]["content"]
    assert with_calls.status_code == 200
    assert guard.seen[1][1] == {"role": "assistant", "content": '{"name": "lookup", "parameters": {"how": "HATE"}}'}


# --- failures the request causes are refusals


def test_a_conversation_too_long_for_the_guard_is_refused_not_passed():
    long_chat = {"messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 4}

    async def scenario():
        replies = {}
        for check in ("output", "prompt"):
            async with running(settings(guard_check=check), ShortGuard(context=1000)) as (client, _, _engine):
                replies[check] = await client.post("/v1/chat/completions", json=long_chat)
                replies[check + " stream"] = await client.post("/v1/chat/completions",
                                                               json={**long_chat, "stream": True})
                replies[check + " metrics"] = await client.get("/metrics")
        return replies

    replies = run(scenario())
    output = replies["output"].json()["choices"][0]
    assert output["finish_reason"] == "content_filter" and output["message"]["content"] == ""
    assert output["content_filter_results"]["error"]["code"] == "content_filter_refused"
    assert "more than its context" in output["content_filter_results"]["error"]["message"]
    stream = replies["output stream"].text
    assert '"finish_reason":"content_filter"' in stream.replace(" ", "") and "WORD" not in stream
    assert metric(replies["output metrics"].text, "llamaserve_guard_checks_total", result="refused",
                  stage="output") == 2.0
    for reply in (replies["prompt"], replies["prompt stream"]):
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["code"] == "content_filter" and error["param"] == "messages"
        assert error["innererror"]["content_filter_result"]["error"]["code"] == "content_filter_refused"


def test_an_answer_that_is_no_verdict_is_refused_not_passed():
    async def scenario():
        async with running(settings(), ScriptedGuard()) as (client, _, _engine):
            return await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "garble"}], "max_tokens": 4})

    choice = run(scenario()).json()["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] == ""
    assert "no verdict" in choice["content_filter_results"]["error"]["message"]


def test_a_remote_guard_refusing_the_conversation_is_a_refusal_and_a_remote_guard_down_is_a_failure():
    def answer(request: httpx.Request) -> httpx.Response:
        if b"long" in request.read():
            return httpx.Response(400, json={"error": {"message": "this model's maximum context length is 16384"}})
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    def remote(_config):
        guard = RemoteGuard("http://guard:8000", None, 2)
        guard._client._transport = httpx.MockTransport(answer)
        return guard

    async def scenario():
        async with running(settings(), guard_factory=remote) as (client, _, _engine):
            long = await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "long"}], "max_tokens": 4})
            down = await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "short"}], "max_tokens": 4})
            return long, down

    long, down = run(scenario())
    assert long.status_code == 400 and long.json()["error"]["code"] == "content_filter"
    assert "maximum context length is 16384" in long.json()["error"]["message"]
    assert down.status_code == 200  # the guard service down: fail-open, as Azure
    assert down.json()["choices"][0]["finish_reason"] == "content_filter_error"


# --- the guard's context against the model's


def test_a_guard_whose_context_cannot_hold_the_models_stops_the_start_naming_both(clean_env):
    def load(guard_fit: GuardFit) -> tuple[ServerState, list[int]]:
        state = ServerState(settings=settings())
        exits: list[int] = []
        clean_env.setattr(state.lifecycle, "exit_now", exits.append)  # the real one signals this process
        engine = ScriptedEngine()  # a context of 4096 tokens
        asyncio.run(_load(state, lambda _: engine, lambda _: ScriptedGuard(fit=guard_fit)))
        return state, exits

    short, exits = load(GuardFit(context=4096, overhead=350))
    assert short.engine is None and exits == [MODEL_LOAD_EXIT_CODE]
    assert "the guard's context (4096 tokens)" in short.load_error
    assert "the model's context (4096 tokens)" in short.load_error
    assert "guard_max_model_len to at least 4446" in short.load_error
    enough, exits = load(GuardFit(context=4446, overhead=350))
    assert enough.engine is not None and enough.load_error is None and exits == []


# --- guard work is the requester's


class HeldGuard(ScriptedGuard):
    """Holds every check until `release` is set; counts the checks running at once per word ("alpha", "beta")."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.changed = asyncio.Condition()
        self.running = {"alpha": 0, "beta": 0}
        self.most = {"alpha": 0, "beta": 0}

    async def classify(self, turns: list[dict[str, str]]) -> GuardReply:
        who = "alpha" if "alpha" in turns[-1]["content"] else "beta"
        async with self.changed:
            self.running[who] += 1
            self.most[who] = max(self.most[who], self.running[who])
            self.changed.notify_all()
        await self.release.wait()
        async with self.changed:
            self.running[who] -= 1
        return await super().classify(turns)


def test_one_keys_checks_run_a_few_at_a_time_and_wait_their_turn_outside_the_time_limit():
    alpha, beta = "a" * 32, "b" * 32
    config = settings(api_keys=f"{alpha},{beta}", guard_check="prompt", guard_max_checks_per_key=2,
                      guard_timeout_s=5)

    async def scenario():
        guard = HeldGuard()
        async with running(config, guard) as (client, _, _engine):
            def post(key: str, word: str):
                return asyncio.create_task(client.post("/v1/chat/completions", headers={"api-key": key}, json={
                    "messages": [{"role": "user", "content": f"{word} hello"}], "max_tokens": 2}))

            alphas = [post(alpha, "alpha") for _ in range(6)]
            async with guard.changed:
                await guard.changed.wait_for(lambda: guard.running["alpha"] >= 2)
            betas = [post(beta, "beta")]
            async with guard.changed:  # beta's check starts while six of alpha's are in, four of them waiting
                await guard.changed.wait_for(lambda: guard.running["beta"] == 1)
            guard.release.set()
            return await asyncio.gather(*alphas, *betas), guard

    replies, guard = run(scenario())
    assert guard.most == {"alpha": 2, "beta": 1}
    assert [r.status_code for r in replies] == [200] * 7
    # Alpha's queued checks waited for its own slots, not inside the check's time limit: all were judged.
    assert all(r.json()["choices"][0]["finish_reason"] == "stop" for r in replies)


def test_guard_checks_are_charged_to_the_keys_token_limit():
    key = "k" * 32
    # 2,000 prompt tokens (one per character here), 4 generated (" W W W W"): 2,004 per request. The guard reads
    # the prompt (2,000 tokens) and the prompt with the output (2,008): 4,008 more. With a limit of 5,000 tokens a
    # minute (83 a second refilled) the paid checks leave the key in debt, which its next admission must wait for;
    # unpaid, the bucket still holds a second request.
    chat = {"messages": [{"role": "user", "content": "w " * 1000}], "max_tokens": 4}

    async def scenario(guard_on: bool):
        config = settings(api_keys=key, rate_limit_tpm=5000, **({} if guard_on else {"guard": "off"}))
        async with running(config, ScriptedGuard() if guard_on else None) as (client, _, _engine):
            first = await client.post("/v1/chat/completions", json=chat, headers={"api-key": key})
            second = await client.post("/v1/chat/completions", json=chat, headers={"api-key": key})
            return first.status_code, second.status_code

    assert run(scenario(guard_on=False)) == (200, 200)
    assert run(scenario(guard_on=True)) == (200, 429)


def test_a_remote_guards_check_costs_the_tokens_its_reply_reports():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"content": "safe"}}],
                                         "usage": {"prompt_tokens": 410, "completion_tokens": 2, "total_tokens": 412}})

    async def scenario():
        guard = RemoteGuard("http://guard:8000", None, 2)
        guard._client._transport = httpx.MockTransport(answer)
        try:
            return await guard.classify([{"role": "user", "content": "hi"}])
        finally:
            await guard.close()

    assert run(scenario()) == GuardReply("safe", 412)

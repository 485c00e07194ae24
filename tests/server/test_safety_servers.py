"""Content safety on real servers: the tiny fixed-verdict Llama Guard checkpoints (tests/tiny_guard.py) through
the real vLLM loader and Llama Guard 3's chat template, as a local guard (a second engine in the server's
process) and as a remote guard (a llamaserve serving the guard model), with real clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from server.protection.security import key_id
from tests.conftest import CACHE_DIR, ServerProcess
from tests.probes import metric

pytestmark = pytest.mark.engine

STRICT = "s" * 32
LENIENT = "l" * 32  # its policy blocks no category
NO_LIMITS = ["--rate-limit-rpm", "0", "--rate-limit-tpm", "0"]
# The built-in tiny model gets these by default; a model given by path does not.
TINY_ENGINE = ["--enforce-eager", "--cpu-kvcache-space-gib", "1", "--dtype", "bfloat16"]
MESSAGES = [{"role": "user", "content": "hello there"}]
# The tiny model's context is 1,024 tokens; Llama Guard 3's template and verdict take 602 of the tiny guard's.
SHORT_GUARD_CONTEXT = 1500
MODEL_LOAD_EXIT_CODE = 78


@pytest.fixture(scope="module")
def unsafe_guard() -> Path:
    from tests.tiny_guard import ensure_tiny_guard

    return ensure_tiny_guard(CACHE_DIR, "unsafe\nS1")


@pytest.fixture(scope="module", autouse=True)
def servers(tiny_model, unsafe_guard):
    """The module's three servers, launched together so that their start-ups overlap (the remote guard is first
    called at request time, so the server that uses it need not wait for it): "local", the tiny model with a local
    guard that finds violence (S1) in everything, checking prompts and outputs; "guard", a llamaserve serving the
    guard model; "remote", the tiny model checking its outputs with "guard" as its remote guard (fail-open, the
    default); "short", a local guard whose context cannot hold the tiny model's (it must not start). Each fixture
    below waits for the one it gives."""
    launched: list[ServerProcess] = []
    try:
        launched.append(guard := ServerProcess(["--model", str(unsafe_guard), "--served-model-name", "llama-guard",
                                                *TINY_ENGINE, *NO_LIMITS]))
        launched.append(local := ServerProcess([
            "--guard", "local", "--guard-model", str(unsafe_guard), "--guard-check", "both",
            "--api-keys", f"{STRICT},{LENIENT}", "--guard-key-categories", json.dumps({key_id(LENIENT): []}),
            *NO_LIMITS,
        ]))
        launched.append(remote := ServerProcess([
            "--guard", "remote", "--guard-url", guard.base_url, "--guard-check", "output",
            "--guard-stream-interval-tokens", "4", "--guard-timeout-s", "5", *NO_LIMITS,
        ]))
        launched.append(short := ServerProcess([
            "--guard", "local", "--guard-model", str(unsafe_guard), "--guard-max-model-len", str(SHORT_GUARD_CONTEXT),
        ]))
        yield {"local": local, "guard": guard, "remote": remote, "short": short}
    finally:
        for srv in launched:
            srv.stop_in_background()


@pytest.fixture(scope="module")
def local_server(servers):
    return servers["local"].wait_ready()


@pytest.fixture(scope="module")
def remote_pair(servers):
    """(server, guard): both ready."""
    return servers["remote"].wait_ready(), servers["guard"].wait_ready()


@pytest.fixture()
def remote_server(remote_pair):
    return remote_pair[0]


# --- the safe checkpoint (first: its engine starts in this process while the module's servers start)


def test_safe_guard_checkpoint_answers_safe_through_the_real_loader(tiny_model):
    from engine.guard import GuardEngine
    from engine.guard_format import conversation, parse_verdict
    from tests.tiny_guard import ensure_tiny_guard
    from server.app import engine_options
    from server.safety.guards import local_guard_options
    from server.settings import Settings

    settings = Settings(guard="local", guard_model=str(ensure_tiny_guard(CACHE_DIR, "safe")),
                        model_cache_dir=CACHE_DIR)
    guard = GuardEngine.start_guard(local_guard_options(settings, engine_options(settings)))
    try:
        async def judge():
            return [(await guard.classify(conversation(MESSAGES, output))).text for output in (None, "an answer")]

        answers = asyncio.run(judge())
    finally:
        guard.shutdown()
        del guard  # its engine is shut down now, not by a finaliser at interpreter exit
    assert answers == ["safe", "safe"]
    assert all(parse_verdict(a).safe for a in answers)


# --- a local guard blocks prompts


def test_blocked_prompt_raw_http(local_server):
    reply = httpx.post(local_server.base_url + "/chat/completions", json={"messages": MESSAGES, "max_tokens": 4},
                       headers={"api-key": STRICT}, timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "content_filter" and error["status"] == 400 and error["param"] == "messages"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}


def test_blocked_prompt_openai_sdk(local_server):
    client = openai.OpenAI(base_url=local_server.base_url + "/v1", api_key=STRICT, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="llamaserve-tiny-llama3", prompt="hello", max_tokens=4)
    assert caught.value.status_code == 400
    assert caught.value.code == "content_filter"
    assert caught.value.param == "prompt"


def test_blocked_prompt_azure_sdk(local_server):
    with ChatCompletionsClient(endpoint=local_server.base_url, credential=AzureKeyCredential(STRICT)) as client:
        with pytest.raises(HttpResponseError) as caught:
            client.complete(messages=[UserMessage("hello there")], max_tokens=4)
    assert caught.value.status_code == 400
    assert caught.value.error.code == "content_filter"


def test_key_whose_policy_blocks_nothing_is_served(local_server):
    client = openai.OpenAI(base_url=local_server.base_url + "/v1", api_key=LENIENT, max_retries=0)
    reply = client.chat.completions.create(model="llamaserve-tiny-llama3", messages=MESSAGES, max_tokens=4,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    metrics = httpx.get(local_server.base_url + "/metrics", timeout=30).text
    # The guard did judge that output (unsafe, S1): the key's policy let it pass.
    assert metric(metrics, "llamaserve_guard_checks_total", result="unsafe", stage="output") >= 1
    assert metric(metrics, "llamaserve_guard_blocks_total", category="violence") >= 1  # the strict key's requests


def test_a_prompt_of_special_token_ids_is_judged_not_passed(local_server):
    """900 reserved special tokens: 900 tokens for the model, ~20,000 spelled out as text, more than the guard's
    4,096. The guard reads the prompt as the model does, without them, and judges it."""
    from engine.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    reserved = [tokenizer.convert_tokens_to_ids(f"<|reserved_special_token_{i}|>") for i in range(3)]
    client = openai.OpenAI(base_url=local_server.base_url + "/v1", api_key=STRICT, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="llamaserve-tiny-llama3", prompt=[reserved[i % 3] for i in range(900)],
                                  max_tokens=4)
    assert caught.value.code == "content_filter"
    assert caught.value.body["innererror"]["content_filter_result"]["violence"]["filtered"] is True


def test_a_guard_whose_context_cannot_hold_the_models_stops_the_server_naming_both(servers):
    short = servers["short"]
    rc = short.proc.wait(300)
    reason = next((line for line in short.log_tail(50_000).splitlines() if "the model failed to load" in line), "")
    assert rc == MODEL_LOAD_EXIT_CODE, short.log_tail()
    assert f"the guard's context ({SHORT_GUARD_CONTEXT} tokens)" in reason
    assert "the model's context (1024 tokens)" in reason


# --- a remote guard cuts outputs


def test_blocked_stream_ends_with_content_filter_and_done(remote_server):
    body = {"messages": MESSAGES, "max_tokens": 16, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", remote_server.base_url + "/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        events = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "content_filter"
    assert last["content_filter_results"]["violence"]["filtered"] is True
    # The first four tokens were judged before any was sent: nothing of the output went out.
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ""


def test_blocked_output_openai_sdk(remote_server):
    client = openai.OpenAI(base_url=remote_server.base_url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="llamaserve-tiny-llama3", messages=MESSAGES, max_tokens=4)
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == ""


def test_dead_remote_guard_fails_open_with_content_filter_error(remote_pair):
    srv, guard = remote_pair
    guard.stop()  # its port is closed from now on: the module's last use of the guard
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="llamaserve-tiny-llama3", messages=MESSAGES, max_tokens=4,
                                           extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.finish_reason == "content_filter_error"
    assert len(choice.message.content) > 0  # served unchecked, and marked so
    assert "unreachable" in choice.model_extra["content_filter_results"]["error"]["message"]
    stream = client.chat.completions.create(model="llamaserve-tiny-llama3", messages=MESSAGES, max_tokens=4,
                                            stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "content_filter_error"

"""usage.prompt_tokens_details.cached_tokens from vLLM's prefix cache, through real clients on the real server.

vLLM's CPU backend caches prompts in blocks of 128 tokens: a prompt of a few hundred tokens sent twice has its
full blocks cached the second time."""

from __future__ import annotations

import itertools
import time

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential

from tests.sse_client import read_events

MODEL = "llamaserve-tiny-llama3"
_fresh = itertools.count()


def _long_prompt(tag: str) -> str:
    """About 300 tokens of the tiny vocabulary, starting with text no earlier request had (so nothing of it is
    cached before its first use)."""
    return f"{tag} {time.time_ns()} {next(_fresh)} " + "the llama walks over the green hill and eats grass " * 30


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def _cached_counter(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("llamaserve_cached_prompt_tokens_total "):
            return float(line.split()[1])
    raise AssertionError("no llamaserve_cached_prompt_tokens_total on /metrics")


def test_a_repeated_chat_prompt_reports_cached_tokens(oai, client):
    messages = [{"role": "user", "content": _long_prompt("chat")}]
    before = _cached_counter(client)
    first = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    second = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached <= second.usage.prompt_tokens
    # The counter moves when each request's exchange ends, just after its last byte: waited for, 30 s at most.
    deadline = time.monotonic() + 30
    while _cached_counter(client) - before < cached:
        assert time.monotonic() < deadline, "llamaserve_cached_prompt_tokens_total did not count the cached tokens"


def test_a_repeated_completion_prompt_reports_cached_tokens_streamed_and_not(oai):
    prompt = _long_prompt("completion")
    first = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    chunks = list(oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2, stream=True,
                                         stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert 0 < usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens
    full = oai.completions.create(model=MODEL, prompt=[prompt, prompt], max_tokens=2)
    assert full.usage.prompt_tokens_details.cached_tokens >= 2 * usage.prompt_tokens_details.cached_tokens


def test_streamed_chat_reports_cached_tokens_on_its_last_chunk(client):
    messages = [{"role": "user", "content": _long_prompt("stream")}]
    body = {"messages": messages, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
    events, done = read_events(client, "/v1/chat/completions", body)
    assert done
    usage = events[-1]["usage"]
    assert 0 < usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]
    assert all("usage" not in e for e in events[:-1])


def test_azure_route_and_sdk_carry_cached_tokens(server):
    messages = [UserMessage(_long_prompt("azure"))]
    with ChatCompletionsClient(endpoint=server.base_url, credential=AzureKeyCredential("unused")) as azure:
        azure.complete(messages=messages, max_tokens=2)
        reply = azure.complete(messages=messages, max_tokens=2)
    # azure-ai-inference's CompletionsUsage keeps fields it does not model readable as a mapping.
    assert 0 < reply.usage["prompt_tokens_details"]["cached_tokens"] <= reply.usage.prompt_tokens

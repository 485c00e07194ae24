"""The official OpenAI Python SDK, unchanged, against the server."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_models_list(oai):
    assert [m.id for m in oai.models.list()] == ["llamaserve-tiny-llama3"]


def test_chat(oai):
    resp = oai.chat.completions.create(
        model="llamaserve-tiny-llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5


def test_chat_stream(oai):
    stream = oai.chat.completions.create(
        model="llamaserve-tiny-llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        temperature=0, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = oai.chat.completions.create(
        model="llamaserve-tiny-llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert text == full.choices[0].message.content


def test_completions_and_stream(oai):
    resp = oai.completions.create(model="llamaserve-tiny-llama3", prompt="Hello", max_tokens=3, temperature=0)
    assert resp.object == "text_completion" and resp.usage.prompt_tokens == 2
    stream = oai.completions.create(model="llamaserve-tiny-llama3", prompt="Hello", max_tokens=3, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == resp.choices[0].text


def test_errors_raise_with_the_message(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model="llamaserve-tiny-llama3", prompt="x", max_tokens=100000)
    assert "context" in info.value.message
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])

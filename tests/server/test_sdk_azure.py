"""The azure-ai-inference SDK (Azure AI Model Inference API) against the server's Azure routes."""

from __future__ import annotations

import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential


@pytest.fixture(scope="module")
def azure(server):
    with ChatCompletionsClient(endpoint=server.base_url, credential=AzureKeyCredential("unused")) as c:
        yield c


def test_get_model_info(azure):
    info = azure.get_model_info()
    assert info.model_name == "llamaserve-tiny-llama3"
    assert info.model_type == "chat-completions"
    assert info.model_provider_name == "Meta"


def test_complete(azure):
    resp = azure.complete(messages=[SystemMessage("Be brief."), UserMessage("hi")], max_tokens=5, model_extras={"ignore_eos": True})
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5


def test_streaming(azure):
    updates = list(azure.complete(messages=[UserMessage("hi")], max_tokens=4, stream=True, temperature=0, model_extras={"ignore_eos": True}))
    text = "".join(u.choices[0].delta.content or "" for u in updates if u.choices)
    full = azure.complete(messages=[UserMessage("hi")], max_tokens=4, temperature=0, model_extras={"ignore_eos": True})
    assert text == full.choices[0].message.content
    assert updates[-1].choices[0].finish_reason == "length"

"""Request validation rules, as pure logic (no engine, no server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import ChatCompletionRequest, CompletionRequest
from schemas.tokenize import TokenizeRequest

MSG = [{"role": "user", "content": "hi"}]


def test_strict_types():
    for bad in ({"max_tokens": "5"}, {"stream": "true"}, {"n": 1.0}, {"temperature": "0.5"}, {"ignore_eos": 1}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"prompt": "x", **bad})
    assert CompletionRequest.model_validate({"prompt": "x", "temperature": 1}).temperature == 1.0  # int for float is fine


def test_prompt_forms():
    assert CompletionRequest.model_validate({"prompt": "a"}).prompts() == ["a"]
    assert CompletionRequest.model_validate({"prompt": ["a", "b"]}).prompts() == ["a", "b"]
    assert CompletionRequest.model_validate({"prompt": [1, 2]}).prompts() == [[1, 2]]
    assert CompletionRequest.model_validate({"prompt": [[1], [2, 3]]}).prompts() == [[1], [2, 3]]
    for bad in ([], [[]], [1, "a"], None, {"text": "a"}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"prompt": bad})


def test_nan_and_infinity_are_not_numbers():
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"prompt": "x", "temperature": value})


def test_unknown_fields_are_kept_for_the_extra_parameters_header():
    req = CompletionRequest.model_validate({"prompt": "x", "frobnicate": 1})
    assert req.extra_fields() == {"frobnicate": 1}


def test_chat_logprobs_forms():
    def k(**fields):
        return ChatCompletionRequest.model_validate({"messages": MSG, **fields}).num_logprobs()

    assert k() is None and k(logprobs=False) is None
    assert k(logprobs=True) == 0 and k(logprobs=True, top_logprobs=4) == 4
    assert k(logprobs=3) == 3  # the Llama (legacy) integer form


def test_max_completion_tokens_is_max_tokens():
    assert ChatCompletionRequest.model_validate({"messages": MSG, "max_completion_tokens": 9}).max_tokens == 9
    with pytest.raises(ValidationError, match="disagree"):
        ChatCompletionRequest.model_validate({"messages": MSG, "max_tokens": 5, "max_completion_tokens": 9})


def test_messages_and_content_parts():
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert req.messages[0].text() == "ab"
    for bad in ([], [{"role": "user"}, "x"], [{"role": "robot", "content": "x"}], [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"messages": bad})


def test_response_format():
    ok = ChatCompletionRequest.model_validate({"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    assert ok.response_format.json_schema.json_schema == {"type": "object"}
    with pytest.raises(ValidationError, match="json_schema is required"):
        ChatCompletionRequest.model_validate({"messages": MSG, "response_format": {"type": "json_schema"}})


def test_tokenize_needs_exactly_one_input():
    assert TokenizeRequest.model_validate({"prompt": "x"}).prompt == "x"
    for bad in ({}, {"prompt": "x", "messages": MSG}):
        with pytest.raises(ValidationError):
            TokenizeRequest.model_validate(bad)

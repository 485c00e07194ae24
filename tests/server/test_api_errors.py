"""Bad input gets a 4xx in the documented error shape, naming the parameter; never a 500."""

from __future__ import annotations

import pytest

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(resp, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["message"]
    assert body["status"] == status and body["message"] == err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return body


def test_malformed_json(client):
    resp = client.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert_error(resp, 400, code="invalid_json")


def test_body_must_be_an_object(client):
    assert_error(client.post("/v1/completions", json=["prompt"]), 400, code="invalid_json")


def test_invalid_utf8(client):
    resp = client.post("/v1/completions", content=b'{"prompt": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert_error(resp, 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "x", "frequency_penalty": -2.5}, "frequency_penalty"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "stop": 3}, "stop"),
        ({"prompt": "x", "seed": 2**70}, "seed"),
    ],
)
def test_completion_field_errors_name_the_parameter(client, body, param):
    body = assert_error(client.post("/v1/completions", json=body), 400, param=param)
    assert body["detail"][0]["loc"][:2] == ["body", param]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": MESSAGES, "max_tokens": -5}, "max_tokens"),
        ({"messages": MESSAGES, "logprobs": "yes"}, "logprobs"),
    ],
)
def test_chat_field_errors_name_the_parameter(client, body, param):
    assert_error(client.post("/v1/chat/completions", json=body), 400, param=param)


def test_huge_numbers_are_rejected_not_crashing(client):
    resp = client.post("/v1/completions", content=b'{"prompt": "x", "max_tokens": 1e999}', headers={"content-type": "application/json"})
    assert resp.status_code == 400
    resp = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10**30})
    assert_error(resp, 400, param="max_tokens")


def test_prompt_longer_than_context(client):
    resp = client.post("/v1/completions", json={"prompt": "llama " * 3000, "max_tokens": 1})
    assert_error(resp, 400, param="prompt", code="context_length_exceeded")
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "llama " * 3000}]})
    assert_error(resp, 400, param="messages", code="context_length_exceeded")


def test_max_tokens_beyond_context(client):
    resp = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5000})
    assert_error(resp, 400, param="max_tokens", code="context_length_exceeded")


def test_token_ids_outside_vocabulary(client):
    assert_error(client.post("/v1/completions", json={"prompt": [5, 10**6]}), 400, param="prompt")


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/completions"), 405)


def test_server_survives_all_of_it(client):
    assert client.post("/v1/completions", json={"prompt": "still here", "max_tokens": 2}).status_code == 200

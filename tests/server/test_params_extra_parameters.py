"""The Azure `extra-parameters` header contract, over httpx, the azure-ai-inference SDK and the OpenAI SDK."""

from __future__ import annotations

import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

BODY = {"prompt": "Hello world", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


def test_unknown_field_is_422_by_default(client):
    resp = client.post("/v1/completions", json={**BODY, "frobnicate": 3, "typo_temprature": 0.5})
    assert resp.status_code == 422
    body = resp.json()
    assert body["status"] == 422 and body["code"] == "parameter_not_supported" and body["message"]
    assert sorted(d["loc"][1] for d in body["detail"]) == ["frobnicate", "typo_temprature"]
    assert {d["input"] for d in body["detail"]} == {3, 0.5}
    assert body["error"]["code"] == "parameter_not_supported"
    explicit = client.post("/v1/completions", json={**BODY, "frobnicate": 3}, headers={"extra-parameters": "error"})
    assert explicit.status_code == 422


def test_drop_ignores_unknown_fields(client):
    plain = client.post("/v1/completions", json=BODY).json()
    dropped = client.post("/v1/completions", json={**BODY, "frobnicate": 3}, headers={"extra-parameters": "drop"})
    assert dropped.status_code == 200
    assert dropped.json()["choices"][0]["text"] == plain["choices"][0]["text"]


def test_pass_through_hands_engine_fields_to_vllm(client):
    full = client.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
    stop = full[2:5]
    cut = {**BODY, "stop": [stop]}
    without = client.post("/v1/completions", json=cut).json()["choices"][0]["text"]
    passed = client.post("/v1/completions", json={**cut, "include_stop_str_in_output": True}, headers={"extra-parameters": "pass-through"})
    assert passed.status_code == 200
    assert passed.json()["choices"][0]["text"] == without + stop


def test_pass_through_rejects_what_the_engine_does_not_know(client):
    resp = client.post("/v1/completions", json={**BODY, "frobnicate": 3}, headers={"extra-parameters": "pass-through"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "frobnicate"]
    bad_type = client.post("/v1/completions", json={**BODY, "bad_words": 5}, headers={"extra-parameters": "pass-through"})
    assert bad_type.status_code == 400 and bad_type.json()["error"]["param"] == "bad_words"


def test_llama_extras_need_no_header(client):
    for extra in ({"n": 2, "temperature": 1}, {"best_of": 2, "temperature": 1}, {"logprobs": 1}, {"ignore_eos": True}, {"stop_token_ids": [5]},
                  {"skip_special_tokens": False}, {"use_beam_search": True, "best_of": 2}):
        assert client.post("/v1/completions", json={**BODY, **extra}).status_code == 200, extra


def test_bad_header_value(client):
    resp = client.post("/v1/completions", json=BODY, headers={"extra-parameters": "sometimes"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "extra-parameters"


def test_response_format_is_422_free_and_works(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    import json

    for seed in range(3):
        body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "yes or no?"}], "max_tokens": 40, "seed": seed,
                                                         "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}).json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert json.loads(choice["message"]["content"])["answer"] in ("yes", "no")
    # The random model's keys and strings end only by chance: of ten seeded answers, the finished ones parse.
    finished = []
    for seed in range(10):
        obj = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "seed": seed,
                                                        "response_format": {"type": "json_object"}}).json()["choices"][0]
        assert obj["finish_reason"] in ("stop", "length") and obj["message"]["content"].startswith("{")
        if obj["finish_reason"] == "stop":
            finished.append(json.loads(obj["message"]["content"]))
    assert finished and all(isinstance(value, dict) for value in finished)
    bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "xml"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"


@pytest.fixture(scope="module")
def azure(server):
    with ChatCompletionsClient(endpoint=server.base_url, credential=AzureKeyCredential("unused")) as c:
        yield c


def test_azure_model_extras_pass_through(azure):
    reply = azure.complete(messages=[UserMessage("hi")], max_tokens=4, model_extras={"best_of": 3, "ignore_eos": True, "spaces_between_special_tokens": False})
    assert reply.usage.completion_tokens == 12  # best_of=3 generated 3 candidates of 4 tokens
    with pytest.raises(HttpResponseError) as info:
        azure.complete(messages=[UserMessage("hi")], max_tokens=4, model_extras={"frobnicate": 1})
    assert info.value.status_code == 422


def test_openai_extra_body(server):
    oai = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    resp = oai.completions.create(model="llamaserve-tiny-llama3", prompt="Hi", max_tokens=3, extra_body={"best_of": 2, "ignore_eos": True})
    assert resp.usage.completion_tokens == 6
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model="llamaserve-tiny-llama3", prompt="Hi", max_tokens=3, extra_body={"frobnicate": 1})
    dropped = oai.completions.create(model="llamaserve-tiny-llama3", prompt="Hi", max_tokens=3, extra_body={"frobnicate": 1},
                                     extra_headers={"extra-parameters": "drop"})
    assert dropped.choices

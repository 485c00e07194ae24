"""The four completion routes, /info, /v1/models and the probes, field by field against the contract (httpx)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.sse_client import read_events

CHAT_ROUTES = ["/chat/completions", "/v1/chat/completions"]
COMPLETION_ROUTES = ["/completions", "/v1/completions"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the llama."}]


def test_info_reports_chat_model_from_meta(client):
    body = client.get("/info").json()
    assert body == {"model_name": "llamaserve-tiny-llama3", "model_type": "chat-completions", "model_provider_name": "Meta"}


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llamaserve-tiny-llama3"]
    assert body["data"][0]["object"] == "model"


def test_probes(client):
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json() == {"status": "ready"}


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_chat_completion_shape(client, route):
    resp = client.post(route, params={"api-version": "2024-05-01-preview"}, json={"messages": MESSAGES, "max_tokens": 7, "ignore_eos": True})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "llamaserve-tiny-llama3"
    [choice] = body["choices"]
    assert set(choice) == {"index", "message", "finish_reason", "logprobs"}
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["message"]["tool_calls"] is None
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] > 10  # system + user turns in the Llama 3 template
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


@pytest.mark.parametrize("route", COMPLETION_ROUTES)
def test_completion_shape(client, route):
    resp = client.post(route, json={"prompt": "The llama", "max_tokens": 5, "ignore_eos": True})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    [choice] = body["choices"]
    assert set(choice) == {"index", "text", "finish_reason", "logprobs"}
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"]["completion_tokens"] == 5


def test_completion_default_max_tokens_is_16(client):
    body = client.post("/v1/completions", json={"prompt": "The llama", "ignore_eos": True}).json()
    assert body["usage"]["completion_tokens"] == 16


def test_chat_default_max_tokens_is_the_rest_of_the_context(client):
    body = client.post("/v1/chat/completions", json={"messages": MESSAGES, "ignore_eos": True}).json()
    usage = body["usage"]
    assert usage["total_tokens"] == 1024  # the tiny model's context
    assert body["choices"][0]["finish_reason"] == "length"


def test_prompt_token_count_matches_token_id_prompt(client):
    ids = [1013, 897, 412, 11, 290]
    body = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_prompt_forms_give_one_choice_per_prompt(client):
    body = client.post("/v1/completions", json={"prompt": ["one", "two", "three"], "max_tokens": 2, "n": 2}).json()
    assert sorted(c["index"] for c in body["choices"]) == list(range(6))
    body = client.post("/v1/completions", json={"prompt": [[1013, 897], [1013, 412]], "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == 4 and len(body["choices"]) == 2


def test_greedy_is_deterministic_and_token_prompt_matches_text_prompt(client):
    a = client.post("/v1/completions", json={"prompt": "Hello world", "max_tokens": 12, "temperature": 0}).json()
    b = client.post("/v1/completions", json={"prompt": "Hello world", "max_tokens": 12, "temperature": 0}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_seed_reproduces_and_varies_samples(client):
    def sample(seed):
        body = {"prompt": "Hello world", "max_tokens": 16, "temperature": 1.0, "seed": seed, "ignore_eos": True}
        return client.post("/v1/completions", json=body).json()["choices"][0]["text"]

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


def test_tiny_top_p_is_greedy(client):
    greedy = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 12, "temperature": 0}).json()
    narrow = [
        client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 12, "top_p": 1e-6, "seed": s}).json()
        for s in range(3)
    ]
    assert all(n["choices"][0]["text"] == greedy["choices"][0]["text"] for n in narrow)


def test_high_temperature_departs_from_greedy(client):
    greedy = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 16, "temperature": 0}).json()
    hot = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 16, "temperature": 2.0, "seed": 1}).json()
    assert hot["choices"][0]["text"] != greedy["choices"][0]["text"]


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_sequence_ends_text_before_it(client, as_list):
    base = {"prompt": "Hello world", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    full = client.post("/v1/completions", json=base).json()["choices"][0]["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = client.post("/v1/completions", json={**base, "stop": [stop] if as_list else stop}).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[: full.index(stop)]


def test_frequency_penalty_reduces_repetition(client):
    def most_repeated(**extra) -> int:
        body = {"prompt": "Hello world", "max_tokens": 48, "temperature": 0, "logprobs": 0, "ignore_eos": True, **extra}
        tokens = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["tokens"]
        # Byte-fallback tokens all print as "": only tokens with visible text can be told apart.
        return max(Counter(t for t in tokens if t.strip()).values())

    plain = most_repeated()
    assert plain > 1, "the greedy run should repeat itself for this test to mean anything"
    assert most_repeated(frequency_penalty=2.0) < plain


def test_presence_penalty_changes_greedy_output(client):
    body = {"prompt": "Hello world", "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    penalised = client.post("/v1/completions", json={**body, "presence_penalty": 2.0}).json()["choices"][0]["text"]
    assert penalised != plain


def test_n_gives_n_distinct_choices(client):
    body = client.post("/v1/chat/completions", json={"messages": MESSAGES, "n": 3, "max_tokens": 8, "seed": 3}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) > 1


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_chat_stream_protocol(client, route):
    events, done = read_events(client, route, {"messages": MESSAGES, "max_tokens": 6, "stream": True, "ignore_eos": True})
    assert done
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["delta"] for e in events[1:] for c in e["choices"])
    reasons = [c["finish_reason"] for e in events for c in e["choices"]]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert "usage" in events[-1] and all("usage" not in e for e in events[:-1])
    assert events[-1]["usage"]["completion_tokens"] == 6
    full = client.post(route, json={"messages": MESSAGES, "max_tokens": 6, "temperature": 0, "ignore_eos": True}).json()
    greedy, _ = read_events(client, route, {"messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True, "ignore_eos": True})
    assert "".join(c["delta"].get("content", "") for e in greedy for c in e["choices"]) == full["choices"][0]["message"]["content"]


@pytest.mark.parametrize("route", COMPLETION_ROUTES)
def test_completion_stream_protocol(client, route):
    events, done = read_events(client, route, {"prompt": "Hello", "max_tokens": 5, "stream": True, "temperature": 0, "ignore_eos": True})
    assert done and all(e["object"] == "text_completion" for e in events)
    reasons = [c["finish_reason"] for e in events for c in e["choices"]]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert events[-1]["usage"]["completion_tokens"] == 5
    streamed = "".join(c["text"] for e in events for c in e["choices"])
    full = client.post(route, json={"prompt": "Hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True}).json()
    assert streamed == full["choices"][0]["text"]


def test_stream_with_n_carries_choice_indices(client):
    events, done = read_events(client, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 4, "n": 3, "stream": True, "ignore_eos": True})
    assert done
    openings = [c["index"] for e in events for c in e["choices"] if c["delta"].get("role") == "assistant"]
    assert openings == [0, 1, 2]
    finished = sorted(c["index"] for e in events for c in e["choices"] if c["finish_reason"] is not None)
    assert finished == [0, 1, 2]
    assert events[-1]["usage"]["completion_tokens"] == 12


def test_stream_usage_can_be_turned_off(client):
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": False}}
    events, _ = read_events(client, "/v1/chat/completions", body)
    assert all("usage" not in e for e in events)


def test_continuous_usage_stats_put_usage_on_every_chunk(client):
    body = {"prompt": "Hello", "max_tokens": 4, "stream": True, "ignore_eos": True, "stream_options": {"continuous_usage_stats": True}}
    events, _ = read_events(client, "/v1/completions", body)
    counts = [e["usage"]["completion_tokens"] for e in events]
    assert counts == sorted(counts) and counts[-1] == 4 and len(counts) == len(events)


def test_unknown_model_is_404_model_not_found(client):
    resp = client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": MESSAGES})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    ok = client.post("/v1/chat/completions", json={"model": "llamaserve-tiny-llama3", "messages": MESSAGES, "max_tokens": 1})
    assert ok.status_code == 200


def test_content_parts_are_joined(client):
    parts = [{"type": "text", "text": "Say hello "}, {"type": "text", "text": "to the llama."}]
    a = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}], "max_tokens": 4, "temperature": 0}).json()
    b = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hello to the llama."}], "max_tokens": 4, "temperature": 0}).json()
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["usage"] == b["usage"]

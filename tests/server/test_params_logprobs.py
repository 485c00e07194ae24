"""logprobs on both APIs, field by field against OpenAI's shapes, and echo."""

from __future__ import annotations

import pytest

from tests.sse_client import read_events

MESSAGES = [{"role": "user", "content": "hi"}]


def _text_of(raw: list[int]) -> str | None:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError:
        return None


def test_completion_legacy_logprobs(client):
    body = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 6, "logprobs": 3, "ignore_eos": True, "seed": 4}).json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    assert "".join(lp["tokens"]) == choice["text"]
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob <= 0
        assert 3 <= len(top) <= 4  # the top 3, plus the sampled token when it is not among them
        assert top[token] == logprob
    offsets = lp["text_offset"]
    assert offsets == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]


def test_legacy_logprobs_keep_every_candidate(client):
    """Byte fragments of UTF-8 characters all decode to the same text; named by their bytes, none overwrites
    another, so each position has the top k, plus the sampled token when it is not among them."""
    k, fragments = 3, 0
    for seed in range(200):
        body = client.post("/v1/completions", json={"prompt": "Hello ☃", "max_tokens": 8, "logprobs": k,
                                                    "ignore_eos": True, "seed": seed, "temperature": 1.0}).json()
        lp = body["choices"][0]["logprobs"]
        for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            assert len(top) in (k, k + 1), (seed, top)
            assert top[token] == logprob
            fragments += sum(name.startswith("bytes:\\x") for name in top)
    assert fragments > 0  # the tiny vocabulary's byte tokens did come up as candidates


def test_completion_logprobs_zero_gives_sampled_token_only(client):
    lp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "logprobs": 0}).json()["choices"][0]["logprobs"]
    assert all(len(top) == 1 for top in lp["top_logprobs"])


def test_greedy_token_is_the_top_logprob(client):
    lp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 6, "logprobs": 2, "temperature": 0, "ignore_eos": True}).json()["choices"][0]["logprobs"]
    for logprob, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob == pytest.approx(max(top.values()))


@pytest.mark.parametrize("form", [{"logprobs": True, "top_logprobs": 3}, {"logprobs": 3}])
def test_chat_logprobs_current_shape(client, form):
    body = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5, "ignore_eos": True, **form}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 5 == body["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        # A token's own bytes: its text's, unless it has no text of its own (a fragment of a UTF-8 character,
        # which vLLM shows as "").
        assert _text_of(entry["bytes"]) in (entry["token"], None) or entry["token"] == ""
        assert len(entry["top_logprobs"]) == 3
        for alt in entry["top_logprobs"]:
            assert set(alt) == {"token", "logprob", "bytes"}
        ranked = [alt["logprob"] for alt in entry["top_logprobs"]]
        assert ranked == sorted(ranked, reverse=True)


def test_chat_logprobs_bytes_are_the_tokens_own(client):
    """A fragment of a UTF-8 character has no text ("" from vLLM); its bytes are still the token's own."""
    fragments = 0
    for seed in range(40):
        body = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 8, "ignore_eos": True,
                                                         "seed": seed, "logprobs": True, "top_logprobs": 5}).json()
        for entry in body["choices"][0]["logprobs"]["content"]:
            for candidate in [entry, *entry["top_logprobs"]]:
                if candidate["token"] in ("", "\ufffd"):
                    fragments += 1
                    assert candidate["bytes"] and _text_of(candidate["bytes"]) is None, candidate
    assert fragments > 0  # the tiny vocabulary's byte tokens did come up


def test_chat_logprobs_true_without_top(client):
    body = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3, "logprobs": True}).json()
    assert all(c["top_logprobs"] == [] for c in body["choices"][0]["logprobs"]["content"])
    off = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3, "logprobs": False}).json()
    assert off["choices"][0]["logprobs"] is None


def test_streamed_logprobs(client):
    events, done = read_events(client, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 4, "stream": True, "logprobs": True, "top_logprobs": 2, "ignore_eos": True})
    entries = [e for ev in events for c in ev["choices"] if c.get("logprobs") for e in c["logprobs"]["content"]]
    assert done and len(entries) == 4 and all(len(e["top_logprobs"]) == 2 for e in entries)
    events, _ = read_events(client, "/v1/completions", {"prompt": "Hi", "max_tokens": 4, "stream": True, "logprobs": 1, "ignore_eos": True})
    tokens = [t for ev in events for c in ev["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
    offsets = [o for ev in events for c in ev["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    text = "".join(c["text"] for ev in events for c in ev["choices"])
    # Offsets point into the streamed text (a byte-fallback token, named `bytes:\xNN`, prints as "" until its
    # character completes).
    assert len(tokens) == 4 and offsets[0] == 0 and offsets == sorted(offsets)
    assert all(o < len(text) or t.startswith("bytes:") for o, t in zip(offsets, tokens))
    starts = {sum(len(c["text"]) for ev in events[:i] for c in ev["choices"]) for i in range(len(events))}
    first_of_each_chunk = [c["logprobs"]["text_offset"][0] for ev in events for c in ev["choices"] if c["logprobs"]]
    assert set(first_of_each_chunk) <= starts


def test_logprobs_cap(client):
    resp = client.post("/v1/completions", json={"prompt": "x", "logprobs": 21})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "logprobs"
    resp = client.post("/v1/chat/completions", json={"messages": MESSAGES, "logprobs": True, "top_logprobs": 50})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "top_logprobs"


def test_echo_prepends_the_prompt(client):
    plain = client.post("/v1/completions", json={"prompt": "Hello world", "max_tokens": 4, "temperature": 0}).json()
    echoed = client.post("/v1/completions", json={"prompt": "Hello world", "max_tokens": 4, "temperature": 0, "echo": True}).json()
    assert echoed["choices"][0]["text"] == "Hello world" + plain["choices"][0]["text"]
    events, _ = read_events(client, "/v1/completions", {"prompt": "Hello world", "max_tokens": 4, "temperature": 0, "echo": True, "stream": True})
    assert "".join(c["text"] for e in events for c in e["choices"]) == echoed["choices"][0]["text"]


def test_echo_with_logprobs_covers_prompt_tokens(client):
    body = client.post("/v1/completions", json={"prompt": "Hello world", "max_tokens": 3, "logprobs": 1, "echo": True}).json()
    lp = body["choices"][0]["logprobs"]
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert len(lp["tokens"]) == prompt_tokens + 3
    assert lp["tokens"][0] == "<|begin_of_text|>" and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v is not None for v in lp["token_logprobs"][1:])
    assert lp["text_offset"][:3] == [0, 0, len("Hello")]

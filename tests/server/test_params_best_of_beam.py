"""best_of and beam search on the real engine, and their validation."""

from __future__ import annotations

import pytest

MESSAGES = [{"role": "user", "content": "Tell the llama a story."}]


def complete(client, **body):
    resp = client.post("/v1/completions", json={"prompt": "Hello world", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def mean_logprob(choice) -> float:
    lps = choice["logprobs"]["token_logprobs"]
    return sum(lps) / len(lps)


def test_best_of_returns_the_candidate_with_the_highest_mean_logprob(client):
    for seed in range(3):
        base = {"max_tokens": 12, "seed": seed, "logprobs": 0, "temperature": 1.0}
        # best_of=4, n=1 samples exactly what n=4 with the same seed samples, then keeps the best.
        candidates = complete(client, n=4, **base)
        best = complete(client, n=1, best_of=4, **base)
        top = max(candidates["choices"], key=mean_logprob)
        assert best["choices"][0]["text"] == top["text"]
        assert best["usage"]["completion_tokens"] == candidates["usage"]["completion_tokens"]  # all 4 were generated


@pytest.mark.parametrize("extra", [
    {"skip_special_tokens": False, "logit_bias": {"1022": 5.0}},  # EOS (<|eot_id|>) made likely
    {"stop_token_ids": list(range(100, 300))},  # stops within a few tokens
    {"max_tokens": 40, "ignore_eos": True},
])
def test_best_of_text_is_the_engines_text_for_that_candidate(client, extra):
    # best_of converts only the kept candidate (without logprobs unless asked): the same text and finish as n=k's
    # best candidate, also where the engine stopped at EOS or a stop token id.
    stops = 0
    for seed in range(4):
        base = {"max_tokens": 24, "seed": 40 + seed, "logprobs": 0, "temperature": 1.0, **extra}
        top = max(complete(client, n=4, **base)["choices"], key=mean_logprob)
        best = complete(client, n=1, best_of=4, **{k: v for k, v in base.items() if k != "logprobs"})["choices"][0]
        assert best["text"] == top["text"] and best["finish_reason"] == top["finish_reason"]
        stops += top["finish_reason"] == "stop"
    assert stops or extra.get("ignore_eos")  # the stopping cases did stop


def test_best_of_beats_plain_samples_over_seeds(client):
    picked, plain = [], []
    for seed in range(5):
        base = {"max_tokens": 16, "seed": 100 + seed, "logprobs": 0, "ignore_eos": True}
        picked.append(mean_logprob(complete(client, best_of=5, **base)["choices"][0]))
        plain.append(mean_logprob(complete(client, **base)["choices"][0]))
    assert sum(picked) / 5 > sum(plain) / 5
    assert all(p >= q for p, q in zip(picked, plain))  # the same seed's first sample is among the candidates


def test_best_of_with_n_returns_n_best_in_order(client):
    body = complete(client, n=2, best_of=5, max_tokens=10, seed=9, logprobs=0)
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert mean_logprob(choices[0]) >= mean_logprob(choices[1])


def test_best_of_without_logprobs_hides_them(client):
    body = complete(client, best_of=3, max_tokens=6, seed=1)
    assert body["choices"][0]["logprobs"] is None


def test_best_of_on_chat(client):
    resp = client.post("/v1/chat/completions", json={"messages": MESSAGES, "best_of": 3, "max_tokens": 8, "ignore_eos": True, "seed": 2})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["choices"]) == 1 and body["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"best_of": 1000}, "best_of"),
        ({"best_of": 0}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),
        ({"n": 1000}, "n"),
        ({"n": 2, "temperature": 0}, "n"),
        ({"best_of": 2, "temperature": 0}, "best_of"),
    ],
)
def test_best_of_errors(client, body, param):
    resp = client.post("/v1/completions", json={"prompt": "x", **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert resp.json()["error"]["message"]


def test_beam_search_is_deterministic_and_returns_n_beams(client):
    body = {"use_beam_search": True, "best_of": 4, "n": 3, "temperature": 0, "max_tokens": 8, "ignore_eos": True, "logprobs": 0}
    a, b = complete(client, **body), complete(client, **body)
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len(a["choices"]) == 3 and len({c["text"] for c in a["choices"]}) == 3
    scores = [sum(c["logprobs"]["token_logprobs"]) for c in a["choices"]]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_finds_a_likelier_sequence_than_greedy(client):
    for prompt in ("Hello world", "The llama", "Once upon a time"):
        base = {"prompt": prompt, "max_tokens": 10, "ignore_eos": True, "logprobs": 0, "temperature": 0}
        greedy = client.post("/v1/completions", json=base).json()["choices"][0]
        beam = client.post("/v1/completions", json={**base, "use_beam_search": True, "best_of": 4}).json()["choices"][0]
        assert sum(beam["logprobs"]["token_logprobs"]) >= sum(greedy["logprobs"]["token_logprobs"]) - 1e-4


def test_beam_search_counts_every_beam_it_ran(client):
    """Usage (what OpenAI clients bill by, and what the rate limit settles to) holds every token of every beam: the
    first step extends the one empty beam, each later step all `width` live ones, as best_of's candidates count."""
    width, max_tokens = 8, 32
    beam = complete(client, use_beam_search=True, best_of=width, temperature=0, max_tokens=max_tokens,
                    ignore_eos=True)
    assert beam["usage"]["completion_tokens"] == 1 + width * (max_tokens - 1)
    sampled = complete(client, best_of=width, temperature=1.0, max_tokens=max_tokens, ignore_eos=True)
    assert sampled["usage"]["completion_tokens"] == width * max_tokens


def test_beam_width_defaults_to_n_and_works_on_chat(client):
    resp = client.post("/v1/chat/completions", json={"messages": MESSAGES, "use_beam_search": True, "n": 2, "max_tokens": 6, "temperature": 0})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == 2


def test_beam_search_stops_at_stop_token_ids_and_applies_length_penalty(client):
    greedy = complete(client, max_tokens=1, temperature=0, logprobs=0)["choices"][0]["logprobs"]["tokens"][0]
    [first] = client.post("/tokenize", json={"prompt": greedy, "add_special_tokens": False}).json()["tokens"]
    # The greedy first token is the likeliest step-0 move, so one beam stops right there. Unnormalised scores
    # (length_penalty 0) rank that one-token beam above any 8-token beam; normalised ones (1) need not.
    body = {"use_beam_search": True, "best_of": 2, "max_tokens": 8, "stop_token_ids": [first], "ignore_eos": True}
    short = complete(client, **body, length_penalty=0.0)
    assert short["choices"][0]["finish_reason"] == "stop"
    assert short["choices"][0]["text"] == greedy


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"use_beam_search": True}, "best_of"),
        ({"use_beam_search": True, "best_of": 3, "temperature": 0.7}, "temperature"),
        ({"use_beam_search": True, "best_of": 3, "stream": True}, "stream"),
        ({"use_beam_search": True, "best_of": 3, "stop": ["x"]}, "stop"),
        ({"use_beam_search": True, "best_of": 3, "logit_bias": {"5": 3}}, "logit_bias"),
    ],
)
def test_beam_search_errors(client, body, param):
    resp = client.post("/v1/completions", json={"prompt": "x", **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param

"""Rate limits per key, overload protection, request deadlines and the body size limit, on the real engine."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess
from tests.launches import LIMITS_TO_MODEL_MODES, planned, take
from tests.probes import metric, sse_events, wait_until

KEYS = [f"limits-key-{i:02d}-0123456789abcdef" for i in range(13)]
RPM, TPM, TIMEOUT_S, MAX_BYTES = 5, 5000, 3, 4096
# Work that outlasts TIMEOUT_S even on an idle, fast machine, within the TPM budget: 4,990 engine steps one after
# the other (a step costs milliseconds whatever the hardware), each with 20 alternatives to rank. Ten choices of
# 490 tokens, batched in 490 steps, finished within 3 s on an idle CI machine.
SLOW_REQUEST = {"prompt": "hi", "max_tokens": 4990, "logprobs": 20, "ignore_eos": True}
# Room for it past the tiny model's 1,024 positions (random weights: nothing to lose there).
LONG_CONTEXT = 6144
PASS = {"extra-parameters": "pass-through"}
# Every choice's first token is forced (+100 bias) and stops it: a large reservation, one token used per choice.
ONE_TOKEN_EACH = {"temperature": 1.0, "logit_bias": {"100": 100}, "stop_token_ids": [100]}


@planned("limited", group=LIMITS_TO_MODEL_MODES)
def _launch_limited(tiny_model, tmp_path_factory) -> ServerProcess:
    return ServerProcess(
        [
            "--rate-limit-rpm", str(RPM), "--rate-limit-tpm", str(TPM),
            "--max-concurrent-requests", "2", "--max-queued-requests", "1",
            "--request-timeout-s", str(TIMEOUT_S), "--max-request-bytes", str(MAX_BYTES),
            "--max-model-len", str(LONG_CONTEXT),
        ],
        env={"LLAMASERVE_API_KEYS": ",".join(KEYS), "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
    )


# The chart's (helm/llamaserve/values.yaml) context and limits: its preset's 131,072 tokens, the settings' default
# rates and admission (200,000 tokens and 1,000 requests a minute a key, 256 slots).
CHART_CONTEXT = 131072
CHART_KEY = "chart-defaults-key-0123456789abcdef"


@planned("chart_defaults", group=LIMITS_TO_MODEL_MODES)
def _launch_chart_defaults(tiny_model, tmp_path_factory) -> ServerProcess:
    return ServerProcess(
        ["--max-model-len", str(CHART_CONTEXT), "--cpu-kvcache-space-gib", "1"],
        env={"LLAMASERVE_API_KEYS": CHART_KEY, "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
        allow_unauthenticated=False,
    )


@pytest.fixture(scope="module")
def chart_defaults(request):
    srv = take("chart_defaults", request)
    yield srv
    srv.stop_in_background()


@pytest.fixture(scope="module")
def limited(request):
    srv = take("limited", request)
    yield srv
    srv.stop_in_background()


def _client(srv, key_index: int) -> httpx.Client:
    return httpx.Client(base_url=srv.base_url, timeout=60, headers={"api-key": KEYS[key_index], **PASS})


def _metrics(srv) -> str:
    return httpx.get(srv.base_url + "/metrics", timeout=10).text


def test_requests_per_minute(limited):
    with _client(limited, 0) as c:
        for i in range(RPM):
            resp = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-ratelimit-limit-requests"] == str(RPM)
            assert resp.headers["x-ratelimit-remaining-requests"] == str(RPM - 1 - i)
            assert resp.headers["x-ratelimit-limit-tokens"] == str(TPM)
            assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
        resp = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    # Another key has its own buckets.
    with _client(limited, 1) as other:
        assert other.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}).status_code == 200


def test_tokens_per_minute_charge_prompt_plus_max_tokens_times_choices(limited):
    body = {"prompt": "hi", "max_tokens": 100, "n": 16, "ignore_eos": True}  # each uses all it reserved
    with _client(limited, 2) as c:
        started = time.monotonic()
        first = c.post("/v1/completions", json=body)
        took = time.monotonic() - started
        assert first.status_code == 200, first.text
        charged = TPM - int(first.headers["x-ratelimit-remaining-tokens"])
        prompt_tokens = first.json()["usage"]["prompt_tokens"]
        # The headers show the bucket after the request was settled: less what it refilled while the request ran.
        assert prompt_tokens + 1600 - took * TPM / 60 - 1 <= charged <= prompt_tokens + 1600
        statuses = [c.post("/v1/completions", json=body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_what_a_request_did_not_use_is_refunded_when_it_ends(limited):
    body = {"prompt": "hi", "max_tokens": 1000, "n": 4, **ONE_TOKEN_EACH}  # reserves ~4000 of 5000
    with _client(limited, 3) as c:
        responses = [c.post("/v1/completions", json=body) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4, responses[-1].text
    assert all(r.json()["usage"]["completion_tokens"] == 4 for r in responses)
    # Each is answered with the bucket after its settlement: the prompts and 4 tokens each charged so far.
    used = responses[0].json()["usage"]["total_tokens"]
    remaining = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in responses]
    assert all(TPM - (i + 1) * used <= left <= TPM for i, left in enumerate(remaining)), remaining


def test_a_request_that_may_cost_more_than_the_token_limit_is_served_when_its_use_fits(limited):
    body = {"prompt": "hi", "max_tokens": 480, "n": 16, **ONE_TOKEN_EACH}  # up to 7680 tokens at 5000 per minute
    with _client(limited, 12) as c:
        resp = c.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 16
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}).status_code == 200


def test_two_concurrent_chats_without_max_tokens_pass_the_charts_default_limits(chart_defaults):
    # A chat without max_tokens may run to the end of the context: 131,072 tokens, of 200,000 a minute. Each
    # reserves a bounded estimate instead, and is charged what it used.
    headers = {"api-key": CHART_KEY, **PASS}
    hi = [{"role": "user", "content": "hi"}]
    # The first runs for at least `min_tokens`, and its frames (4 choices x 20 alternatives) fill the socket
    # buffers long before that: unread, it holds its slot and its reservation until the client leaves.
    long_stream = {"messages": hi, "n": 4, "logprobs": True, "top_logprobs": 20, "min_tokens": 5000,
                   "stream": True, **ONE_TOKEN_EACH}
    with httpx.Client(base_url=chart_defaults.base_url, timeout=60, headers=headers) as c:
        with c.stream("POST", "/v1/chat/completions", json=long_stream) as first:
            assert first.status_code == 200, first.read()
            lines = first.iter_lines()  # kept: dropping a started httpx iterator closes the connection
            assert next(lines).startswith("data: ")  # admitted and generating
            second = c.post("/v1/chat/completions", json={"messages": hi, **ONE_TOKEN_EACH})
            # The first was admitted before the second was sent, and is still in flight after its answer.
            assert metric(_metrics(chart_defaults), "llamaserve_requests_in_flight") == 1
        # Leaving the first stream ends it (reading its thousands of steps to the end would take minutes here).
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["finish_reason"] == "stop"
    assert wait_until(lambda: metric(_metrics(chart_defaults), "llamaserve_requests_in_flight") == 0, 10)


def test_overload_is_refused_at_once_and_slots_are_held_until_the_last_frame(limited):
    # Streams that hold their slots until the deadline on any machine: a plain stream of the tiny model ends in a
    # second or two (its unread frames fit in the socket buffers), before the next request could queue; frames with
    # 4 choices x 20 alternatives fill those buffers at once, and every step is costly (within the TPM budget).
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 900, "n": 4, "logprobs": True,
            "top_logprobs": 20, "ignore_eos": True, "stream": True}
    clients = [_client(limited, 4 + i) for i in range(4)]
    results: dict[str, object] = {}
    try:
        streams = [clients[i].stream("POST", "/v1/chat/completions", json=chat) for i in range(2)]
        # Headers come once a request holds its slot: the next one queues from here on, whatever the machine's speed.
        responses = [s.__enter__() for s in streams]

        def queued() -> None:
            with clients[2].stream("POST", "/v1/chat/completions", json=chat) as r:
                results["queued"] = (r.status_code, r.read().decode())

        waiter = threading.Thread(target=queued)
        waiter.start()
        # One line iterator per stream, kept: dropping a started httpx iterator closes the connection.
        lines = [r.iter_lines() for r in responses]
        assert all(next(it).startswith("data: ") for it in lines)  # both routes returned; frames still flowing
        assert wait_until(lambda: metric(_metrics(limited), "llamaserve_requests_queued") == 1, 10)
        assert metric(_metrics(limited), "llamaserve_requests_in_flight") == 2
        started = time.monotonic()
        refused = clients[3].post("/v1/chat/completions", json={**chat, "stream": False})
        assert time.monotonic() - started < 1
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        for it, s in zip(lines, streams):
            rest = "\n".join(it)
            s.__exit__(None, None, None)
            assert rest.rstrip().endswith("data: [DONE]")
        waiter.join(30)
        status, raw = results["queued"]
        # Queued, never refused: it got a slot when one was freed, or its own deadline passed in the queue first
        # (the running streams hold theirs up to the same deadline).
        if status == 504:
            assert orjson.loads(raw)["error"]["code"] == "timeout", raw
        else:
            assert status == 200 and sse_events(raw)[1]
    finally:
        for c in clients:
            c.close()
    assert wait_until(lambda: metric(_metrics(limited), "llamaserve_requests_in_flight") == 0, 5)
    text = _metrics(limited)
    assert metric(text, "llamaserve_rejected_requests_total", reason="overloaded") >= 1


def test_a_request_past_its_deadline_is_cancelled_with_504(limited):
    with _client(limited, 8) as c:
        started = time.monotonic()
        resp = c.post("/v1/completions", json=SLOW_REQUEST)
        took = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "timeout"
    assert TIMEOUT_S - 0.1 < took < TIMEOUT_S + 2
    assert wait_until(lambda: metric(_metrics(limited), "llamaserve_engine_requests_in_flight") == 0, 5)


def test_a_stream_past_its_deadline_ends_with_an_error_event_then_done(limited):
    body = {**SLOW_REQUEST, "stream": True}
    with _client(limited, 9) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events, done = sse_events(r.read().decode())
    assert done and events[-1]["error"]["code"] == "timeout"
    assert all(e.get("choices") is not None for e in events[:-1])
    assert wait_until(lambda: metric(_metrics(limited), "llamaserve_engine_requests_in_flight") == 0, 5)


def test_bodies_over_the_limit_get_413_before_parsing(limited):
    with _client(limited, 10) as c:
        declared = c.post("/v1/completions", content=b"{" + b" " * MAX_BYTES + b"}",
                          headers={"content-type": "application/json"})
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the bytes actually read are counted
            for _ in range(10):
                yield b" " * 1000

        chunked = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        fits = c.post("/v1/completions", json={"prompt": "x" * (MAX_BYTES - 100), "max_tokens": 1})
        assert fits.status_code != 413

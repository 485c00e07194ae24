"""What the Inference Gateway's endpoint picker reads from a replica, on the real engine with LoRA on: vLLM's queue,
running and KV-cache gauges and vllm:lora_requests_info with its running and waiting adapters, scraped from
/metrics without a key (metrics_show_adapters) while streams are in flight; and the session hint
(`prompt_cache_key`, the `x-session-id` header) that never changes an answer."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CACHE_DIR, ServerProcess
from tests.tiny_lora import ensure_tiny_lora

BASE = "llamaserve-tiny-llama3"
ADAPTER = "alpha"
# The engine runs this many sequences at once; the streams beyond it wait in vLLM's queue.
MAX_NUM_SEQS = 2
STREAMS = 6
# Each stream generates this many tokens (ignore_eos): with two sequences at a time, the first pair alone takes
# seconds on these loaded CPUs, while the scrape below takes tens of milliseconds.
STREAM_TOKENS = 400
# How long the streams may take to reach the engine (first tokens, arrivals), on a loaded 2-core machine.
ARRIVAL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def srv(tiny_model: Path):
    adapter_dir = ensure_tiny_lora(CACHE_DIR, tiny_model, seed=1)
    process = ServerProcess([
        "--model", str(tiny_model), "--served-model-name", BASE,
        "--enforce-eager", "--cpu-kvcache-space-gib", "1", "--dtype", "bfloat16",
        "--rate-limit-rpm", "0", "--rate-limit-tpm", "0",
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-lora-rank", "8", "--max-loras", "2",
        "--lora", f"{ADAPTER}={adapter_dir}", "--metrics-show-adapters",
    ]).wait_ready()
    yield process
    process.stop()


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def gauge(found: dict[str, list], name: str) -> float:
    samples = found.get(name, [])
    assert len(samples) == 1, f"{name}: {samples}"  # one engine, one sample
    return samples[0].value


def newest_lora_info(found: dict[str, list]) -> dict[str, str]:
    """The labels of vllm:lora_requests_info's newest sample: vLLM keeps a sample per set of adapters it has seen,
    valued with the time it last saw it, and the endpoint picker reads the newest."""
    samples = found.get("vllm:lora_requests_info", [])
    assert samples, "vllm:lora_requests_info is not on /metrics"
    return max(samples, key=lambda s: s.value).labels


def adapters_in(label: str) -> set[str]:
    return {name.strip() for name in label.split(",") if name.strip()}


class Stream(threading.Thread):
    """One streamed completion read to its end; `first` is set at its first token, `done` at its last byte."""

    def __init__(self, base_url: str, model: str):
        super().__init__(daemon=True)
        self.base_url, self.model = base_url, model
        self.first, self.done = threading.Event(), threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        body = {"model": self.model, "prompt": "Once upon a time", "max_tokens": STREAM_TOKENS, "ignore_eos": True,
                "stream": True}
        try:
            with httpx.stream("POST", self.base_url + "/v1/completions", json=body, timeout=600) as resp:
                if resp.status_code != 200:
                    self.error = f"{resp.status_code} {resp.read()!r}"
                for line in resp.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                        self.first.set()
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.done.set()


def test_picker_metrics_under_load_agree_with_what_is_in_flight(srv):
    streams = [Stream(srv.base_url, ADAPTER if i % 2 == 0 else BASE) for i in range(STREAMS)]
    for stream in streams:
        stream.start()
    try:
        # The engine's first sequences are running once they stream a token.
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while sum(s.first.is_set() for s in streams) < MAX_NUM_SEQS:
            assert time.monotonic() < deadline, [s.error for s in streams]
            time.sleep(0.02)
        # Every stream has reached the engine once the replica's own count of engine requests says so.
        while True:
            found = families(httpx.get(srv.base_url + "/metrics", timeout=30).text)
            in_engine = gauge(found, "llamaserve_engine_requests_in_flight")
            if in_engine == STREAMS:
                break
            assert time.monotonic() < deadline, f"{in_engine} of {STREAMS} streams reached the engine"
            time.sleep(0.02)
        assert not any(s.done.is_set() for s in streams), "a stream ended before the scrape: raise STREAM_TOKENS"
        running = gauge(found, "vllm:num_requests_running")
        waiting = gauge(found, "vllm:num_requests_waiting")
        assert running == MAX_NUM_SEQS and waiting == STREAMS - MAX_NUM_SEQS, (running, waiting)
        assert 0 < gauge(found, "vllm:kv_cache_usage_perc") <= 1
        # The prefix scorer's block size and block count, optional in the picker's protocol.
        [cache] = found["vllm:cache_config_info"]
        assert int(cache.labels["block_size"]) > 0 and int(cache.labels["num_gpu_blocks"]) > 0
        info = newest_lora_info(found)
        assert info["max_lora"] == "2"
        # Half the streams (3) ask for the adapter and at most MAX_NUM_SEQS (2) run: one of them at least waits,
        # and the adapter's list shows it (vLLM's own series learns of a queued request only at its first step).
        assert ADAPTER in adapters_in(info["waiting_lora_adapters"]), info
        assert adapters_in(info["running_lora_adapters"]) <= {ADAPTER}, info
    finally:
        for stream in streams:
            stream.join(timeout=600)
    assert [s.error for s in streams] == [None] * STREAMS
    # Once the load is over, the engine holds nothing and no adapter runs or waits.
    found = families(httpx.get(srv.base_url + "/metrics", timeout=30).text)
    assert gauge(found, "vllm:num_requests_running") == 0 == gauge(found, "vllm:num_requests_waiting")
    info = newest_lora_info(found)
    assert info["running_lora_adapters"] == "" == info["waiting_lora_adapters"], info


def test_the_session_hint_never_changes_an_answer(srv):
    body = {"model": BASE, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=srv.base_url, timeout=120) as http:
        plain = http.post("/v1/completions", json=body)
        keyed = http.post("/v1/completions", json={**body, "prompt_cache_key": "conv-5f1c2a"})
        headed = http.post("/v1/completions", json={**body, "prompt_cache_key": "conv-5f1c2a"},
                           headers={"x-session-id": "conv-5f1c2a"})
    assert [r.status_code for r in (plain, keyed, headed)] == [200, 200, 200], keyed.text
    texts = [r.json()["choices"][0]["text"] for r in (plain, keyed, headed)]
    assert texts[0] and texts == [texts[0]] * 3
    # OpenAI's own client sends it as an argument of its own.
    sdk = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", timeout=120)
    chat = {"model": BASE, "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 12,
            "temperature": 0, "extra_body": {"ignore_eos": True}}
    answers = [sdk.chat.completions.create(**chat).choices[0].message.content,
               sdk.chat.completions.create(**chat, prompt_cache_key="conv-5f1c2a").choices[0].message.content]
    assert answers[0] and answers[1] == answers[0]

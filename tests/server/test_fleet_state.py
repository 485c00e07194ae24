"""What a fleet shares besides its limits: two `llamaserve serve` replicas on the real engine share one real
redis-server. A stored response created on replica A is retrieved, continued (`previous_response_id`) and deleted
through replica B with the OpenAI SDK; an adapter loaded through A answers on B and is listed by B's /v1/models,
unloaded through A it is gone from B, and a replica started later serves the recorded adapters as soon as it is
ready. The rules in process: tests/app/test_fleet_responses.py, tests/app/test_fleet_adapters.py."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR, ServerProcess
from tests.redis_server import RedisServer, require_redis
from tests.tiny_lora import ensure_tiny_lora

BASE = "llamaserve-tiny-llama3"
ADMIN = "fleet-admin-key-0123456789"
KEY = "fleet-tenant-key-0123456789"
PROMPT = "Once upon a time"
# B applies the record at its next poll (1 s, the default) and then loads the adapter on its engine: a second or two
# alone; the margin covers a 2-core host shared with other test runs.
APPLIED_WITHIN_S = 60


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def redis():
    require_redis()
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(tiny_model: Path, redis):
    replicas = [ServerProcess(replica_args(tiny_model, redis)), ServerProcess(replica_args(tiny_model, redis))]
    try:  # started together: their start-ups overlap
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop_in_background()


def replica_args(tiny_model: Path, redis: RedisServer) -> list[str]:
    return ["--model", str(tiny_model), "--served-model-name", BASE, "--enforce-eager", "--cpu-kvcache-space-gib", "1",
            "--dtype", "bfloat16", "--rate-limit-rpm", "0", "--rate-limit-tpm", "0", "--api-keys", KEY,
            "--admin-api-keys", ADMIN, "--allow-runtime-lora", "--max-lora-rank", "8", "--max-loras", "2",
            "--max-cpu-loras", "2", "--redis-url", redis.url]


def models(replica: ServerProcess) -> set[str]:
    r = httpx.get(replica.base_url + "/v1/models", headers=bearer(KEY), timeout=30)
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


def completion(replica: ServerProcess, model: str) -> httpx.Response:
    return httpx.post(replica.base_url + "/v1/completions", headers=bearer(KEY), timeout=120,
                      json={"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True})


def wait_for(check, what: str, replica: ServerProcess) -> None:
    deadline = time.monotonic() + APPLIED_WITHIN_S
    while not check():
        assert time.monotonic() < deadline, f"not within {APPLIED_WITHIN_S}s: {what}\n{replica.log_tail()}"
        time.sleep(0.2)


def test_a_response_stored_on_one_replica_is_continued_and_deleted_on_the_other(fleet):
    on_a, on_b = (openai.OpenAI(base_url=replica.base_url + "/v1", api_key=KEY, max_retries=0) for replica in fleet)
    first = on_a.responses.create(model=BASE, input="Say hello", max_output_tokens=4, temperature=0)
    assert on_b.responses.retrieve(first.id).model_dump() == first.model_dump()

    second = on_b.responses.create(model=BASE, input="And again", previous_response_id=first.id,
                                   max_output_tokens=4, temperature=0)
    assert second.previous_response_id == first.id
    # B replayed A's turn: its input holds A's input and output before its own
    replayed = [item.model_dump(exclude_none=True) for item in on_a.responses.input_items.list(second.id, order="asc")]
    texts = [part.get("text") for item in replayed for part in item.get("content", [])]
    assert texts == ["Say hello", first.output_text, "And again"], replayed

    on_b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        on_a.responses.retrieve(first.id)


def test_an_adapter_loaded_through_one_replica_answers_on_the_other_and_unloads_from_both(fleet, tiny_model):
    a, b = fleet
    path = ensure_tiny_lora(CACHE_DIR, tiny_model, seed=2)
    assert "support" not in models(b)
    r = httpx.post(a.base_url + "/v1/load_lora_adapter", headers=bearer(ADMIN), timeout=120,
                   json={"lora_name": "support", "lora_path": str(path)})
    assert r.status_code == 200, r.text
    assert r.json()["shared"] is True

    wait_for(lambda: "support" in models(b), "B lists the adapter loaded through A", b)
    on_b = completion(b, "support")
    assert on_b.status_code == 200, on_b.text
    assert on_b.json()["model"] == "support"
    # the same fine-tune on both replicas: the same greedy text, and not the base model's
    assert on_b.json()["choices"][0]["text"] == completion(a, "support").json()["choices"][0]["text"]
    assert on_b.json()["choices"][0]["text"] != completion(b, BASE).json()["choices"][0]["text"]

    r = httpx.post(a.base_url + "/v1/unload_lora_adapter", headers=bearer(ADMIN), timeout=60,
                   json={"lora_name": "support"})
    assert r.status_code == 200 and r.json()["shared"] is True, r.text
    wait_for(lambda: "support" not in models(b), "B drops the adapter unloaded through A", b)
    gone = completion(b, "support")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert "support" not in models(a)


def test_a_replica_started_later_serves_the_recorded_adapters_once_ready(fleet, tiny_model, redis):
    a, _ = fleet
    path = ensure_tiny_lora(CACHE_DIR, tiny_model, seed=3)
    r = httpx.post(a.base_url + "/v1/load_lora_adapter", headers=bearer(ADMIN), timeout=120,
                   json={"lora_name": "recorded", "lora_path": str(path)})
    assert r.status_code == 200 and r.json()["shared"] is True, r.text
    late = ServerProcess(replica_args(tiny_model, redis)).wait_ready()
    try:
        assert "recorded" in models(late)  # applied before it turned ready: no wait
        on_late = completion(late, "recorded")
        assert on_late.status_code == 200, on_late.text
        assert on_late.json()["choices"][0]["text"] == completion(a, "recorded").json()["choices"][0]["text"]
    finally:
        late.stop_in_background()

"""Per-key rate limits shared by a fleet: two `llamaserve serve` replicas on the real engine and one real
redis-server. A key's requests and tokens per minute hold across both replicas; Redis killed under a 32-stream load
fails no request, and once it is back the shared limits apply again."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.probes import metric, sse_events, wait_until
from tests.redis_server import RedisServer, require_redis

KEYS = [f"fleet-key-{i:02d}-0123456789abcdef" for i in range(16)]
RPM, TPM = 5, 5000
FALLBACK_S = 2  # rate_limit_fallback_s: how long a replica decides alone after a failed Redis call
# Each uses all it reserves: prompt + 1,600 tokens, so three fit in a bucket of 5,000 and a fourth does not.
SIXTEEN_HUNDRED = {"prompt": "hi", "max_tokens": 100, "n": 16, "ignore_eos": True}
PASS = {"extra-parameters": "pass-through"}

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def fleet(tiny_model):
    require_redis()
    redis = RedisServer().start()
    args = ["--rate-limit-rpm", str(RPM), "--rate-limit-tpm", str(TPM), "--redis-url", redis.url,
            "--rate-limit-fallback-s", str(FALLBACK_S), "--max-concurrent-requests", "64"]
    env = {"LLAMASERVE_API_KEYS": ",".join(KEYS)}
    replicas = [ServerProcess(args, env=env), ServerProcess(args, env=env)]  # started together
    try:
        for replica in replicas:
            replica.wait_ready()
        yield redis, replicas
    finally:
        for replica in replicas:
            replica.stop_in_background()
        redis.stop()


def _post(srv: ServerProcess, key: int, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.base_url + path, json=body, headers={"api-key": KEYS[key], **PASS}, timeout=120)


def _shared_state_up(srv: ServerProcess) -> float | None:
    return metric(httpx.get(srv.base_url + "/metrics", timeout=10).text, "llamaserve_shared_state_up")


def _requests_alternating(replicas: list[ServerProcess], key: int, count: int) -> list[httpx.Response]:
    return [_post(replicas[i % 2], key, "/v1/completions", {"prompt": "hi", "max_tokens": 1}) for i in range(count)]


def test_a_key_gets_exactly_its_requests_per_minute_across_both_replicas(fleet):
    _, replicas = fleet
    started = time.monotonic()
    responses = _requests_alternating(replicas, 0, 2 * RPM)
    took = time.monotonic() - started
    # A bucket of RPM refills one request in 60 / RPM s: within that, the count is exact.
    assert took < 60 / RPM, f"the requests took {took:.1f} s: a request refilled, the count is no longer exact"
    assert [r.status_code for r in responses] == [200] * RPM + [429] * RPM, responses[RPM].text
    # Each answer shows the shared bucket: the other replica's requests are counted in it.
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses[:RPM]] == [
        str(RPM - 1 - i) for i in range(RPM)]
    refused = responses[RPM]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60 // RPM


def test_a_key_gets_exactly_its_tokens_per_minute_across_both_replicas(fleet):
    _, replicas = fleet
    started = time.monotonic()
    responses = [_post(replicas[i % 2], 1, "/v1/completions", SIXTEEN_HUNDRED) for i in range(4)]
    took = time.monotonic() - started
    used = responses[0].json()["usage"]["total_tokens"]
    # After three, TPM - 3 x used are left: the fourth fits only once TPM / 60 a second have refilled the rest.
    assert took < (used - (TPM - 3 * used)) * 60 / TPM, f"the requests took {took:.1f} s: the bucket refilled"
    assert [r.status_code for r in responses] == [200, 200, 200, 429], responses[-1].text
    remaining = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in responses[:3]]
    # Settled before each answer; the bucket refilled a little meanwhile.
    for i, left in enumerate(remaining):
        assert TPM - (i + 1) * used <= left <= TPM - (i + 1) * used + took * TPM / 60 + 1, remaining
    assert "tokens per minute" in responses[3].json()["error"]["message"]


def _stream(srv: ServerProcess, key: int, first_event: threading.Event, results: list, index: int) -> None:
    body = {"prompt": "hi", "max_tokens": 200, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", srv.base_url + "/v1/completions", json=body, timeout=300,
                          headers={"api-key": KEYS[key], **PASS}) as resp:
            raw = ""
            for chunk in resp.iter_text():
                raw += chunk
                first_event.set()
            results[index] = (resp.status_code, raw)
    except Exception as exc:  # noqa: BLE001 - reported by the test as a failed request
        results[index] = (None, repr(exc))


def _load(replicas: list[ServerProcess], keys: range, count: int, results: list, offset: int) -> list[threading.Thread]:
    """`count` streams, alternating replicas and spread over `keys` (each key within its limits either way)."""
    threads = []
    for i in range(count):
        started = threading.Event()
        t = threading.Thread(target=_stream, args=(replicas[i % 2], keys[i % len(keys)], started, results,
                                                   offset + i))
        t.start()
        threads.append((t, started))
    return threads


def test_redis_killed_under_load_fails_no_request_and_the_shared_limits_resume(fleet):
    redis, replicas = fleet
    results: list = [None] * 32
    # 8 keys x 4 streams: within RPM and TPM on the shared buckets, and on each replica's own.
    first = _load(replicas, range(4, 12), 16, results, 0)
    assert all(started.wait(120) for _, started in first), "the first streams did not start"
    redis.stop()  # as a crash
    assert any(t.is_alive() for t, _ in first), "the first streams were over before Redis went: no load to kill it under"
    second = _load(replicas, range(4, 12), 16, results, 16)
    for t, _ in first + second:
        t.join(300)
    for status, raw in results:
        assert status == 200, raw
        events, done = sse_events(raw)
        assert done and not any("error" in e for e in events), raw[-500:]
    fallbacks = [metric(httpx.get(r.base_url + "/metrics", timeout=10).text,
                        "llamaserve_shared_state_fallbacks_total", concern="rate_limits") for r in replicas]
    assert all(f and f > 0 for f in fallbacks), fallbacks  # both admitted while Redis was down, on their own

    redis.start()  # the same port, empty
    # Each replica tries Redis again FALLBACK_S after its last failed call, at its next admission: poll with
    # cheap requests (a 429 is as good a probe) until both answered through Redis; 30 s is ample on a loaded
    # machine for a bound of FALLBACK_S.
    def both_shared() -> bool:
        for r in replicas:
            _post(r, 12, "/v1/tokenize", {"prompt": "hi"})
        return all(_shared_state_up(r) == 1 for r in replicas)

    assert wait_until(both_shared, timeout=30, interval=0.5), [_shared_state_up(r) for r in replicas]
    # Enforced by the shared state again: a fresh key gets RPM requests across both replicas, not RPM each.
    responses = _requests_alternating(replicas, 13, 2 * RPM)
    assert [r.status_code for r in responses] == [200] * RPM + [429] * RPM

"""Rate buckets shared through Redis: the Lua scripts' decisions, the fairness rules across two replicas' Limits,
and failing open to the local buckets when Redis is dead or hung. In process, against a real redis-server (no
engine: the admission logic runs before it)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import asynccontextmanager

import pytest
import redis

from server.errors import APIError
from server.fleet.link import RedisLink
from server.fleet.rates import RedisBuckets, key_prefix
from server.observe.exchange import Exchange
from server.protection.limits import Limits, RequestAdmission
from server.protection.security import key_id
from server.settings import Settings
from tests.redis_server import redis_server  # noqa: F401  (the fixture)

RPM, TPM, RESERVE = 3, 5000, 256
TIMEOUT_S = 0.25  # the link's limit on one Redis call
RETRY_S = 0.5  # how long a replica decides on its own buckets after a failed call, in these tests
DEPLOYMENT = "fleet-test"


class CountingBuckets(RedisBuckets):
    """The Redis buckets, counting the calls that reach the link."""

    calls = 0

    async def _run(self, operation):
        self.calls += 1
        return await super()._run(operation)


class Replica:
    def __init__(self, url: str, rpm: int = RPM, tpm: int = TPM):
        self.link = RedisLink(url, TIMEOUT_S)
        self.limits = Limits(Settings(rate_limit_rpm=rpm, rate_limit_tpm=tpm,
                                      rate_limit_default_reserve_tokens=RESERVE))
        self.store = CountingBuckets(self.link, DEPLOYMENT)
        self.limits.share(self.store, RETRY_S, lambda: self.link.fell_back("rate_limits"))

    async def admit(self, key: str, prompt: int, max_tokens: int | None, chars: int = 0
                    ) -> tuple[RequestAdmission, Exchange]:
        """Admitted as the routes admit: `prompt` token ids (or `chars` of text, counted as `prompt` tokens)."""
        ex = Exchange("rid", "POST", "/v1/completions", "203.0.113.7", key_id=key)
        gate = self.limits.admission_for(ex)
        await gate.admit_prompts(chars, 0 if chars else prompt, max_tokens, 1)
        gate.count_prompts(prompt)
        return gate, ex

    async def serve(self, key: str, prompt: int, max_tokens: int | None, generated: int) -> dict[str, str]:
        """A full response: admitted, then settled before it is sent; its headers."""
        gate, ex = await self.admit(key, prompt, max_tokens)
        ex.completion_tokens = generated
        await gate.settle()
        ex.close()
        return headers(ex)


def headers(ex: Exchange) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in ex.response_headers}


@asynccontextmanager
async def replicas(url: str, count: int = 2, **limits):
    made = [Replica(url, **limits) for _ in range(count)]
    try:
        yield made
    finally:
        for r in made:
            assert r.limits.shared is not None
            await r.limits.shared.finish()
            await r.link.close()


def test_a_key_gets_its_requests_per_minute_across_replicas_and_the_headers_show_the_shared_state(redis_server):
    async def main():
        async with replicas(redis_server.url) as (a, b):
            remaining = []
            for i in range(RPM):
                sent = await (a if i % 2 == 0 else b).serve("key-a", 1, 1, 1)
                remaining.append(sent["x-ratelimit-remaining-requests"])
            with pytest.raises(APIError) as refused:
                await b.serve("key-a", 1, 1, 1)
            other = await b.serve("key-b", 1, 1, 1)
            return remaining, refused.value, other

    remaining, refused, other = asyncio.run(main())
    assert remaining == [str(RPM - 1 - i) for i in range(RPM)]  # each replica saw the other's charges
    assert refused.status == 429 and refused.code == "rate_limit_exceeded"
    assert "requests per minute" in refused.message
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 // RPM + 1
    assert other["x-ratelimit-remaining-requests"] == str(RPM - 1)  # another key has its own buckets


def test_reservations_and_settlements_are_shared(redis_server):
    async def main():
        async with replicas(redis_server.url, rpm=0) as (a, b):
            # A reserves 10 + 1000 and is still running: B sees the reservation.
            running, ex = await a.admit("key-a", 10, 1000)
            seen_by_b = await b.serve("key-a", 10, 10, 10)
            # A used 10 + 5: the rest of its reservation comes back, for B too.
            ex.completion_tokens = 5
            await running.settle()
            after = await b.serve("key-a", 10, 10, 10)
            # A key that used more than it reserved owes it: 10 + 100 reserved, 10 + 4990 used.
            await a.serve("key-a", 10, 100, 4990)
            with pytest.raises(APIError) as owing:
                await b.serve("key-a", 10, 100, 0)
            return seen_by_b, after, owing.value

    seen_by_b, after, owing = asyncio.run(main())
    # The headers show the bucket after the settlement; it refilled a little meanwhile (TPM / 60 a second).
    assert TPM - 1010 - 20 <= int(seen_by_b["x-ratelimit-remaining-tokens"]) <= TPM - 1010 - 20 + 10
    assert TPM - 15 - 40 <= int(after["x-ratelimit-remaining-tokens"]) <= TPM - 15 - 40 + 10
    assert owing.status == 429 and "tokens per minute" in owing.message


def test_the_prompts_exact_count_and_extra_charges_are_settled_in_one_round_trip(redis_server):
    async def main():
        async with replicas(redis_server.url, count=1, rpm=0) as (a,):
            gate, ex = await a.admit("key-a", 130, 100, chars=400)  # estimated at 100 tokens, counted 130
            counted = headers(ex)["x-ratelimit-remaining-tokens"]
            a.limits.charge_tokens(ex, 300)  # a guard's checks, say
            charged = headers(ex)["x-ratelimit-remaining-tokens"]
            calls_before = a.store.calls
            ex.completion_tokens = 10
            await gate.settle()
            round_trips = a.store.calls - calls_before
            state = redis.Redis.from_url(redis_server.url).hgetall(key_prefix(DEPLOYMENT) + "key-a")
            return counted, charged, round_trips, float(state[b"t"])

    counted, charged, round_trips, level = asyncio.run(main())
    assert (int(counted), int(charged)) == (TPM - 230, TPM - 530)
    assert round_trips == 1
    assert TPM - 440 <= level <= TPM - 440 + 10  # 130 + 10 used, 300 charged; refilled a little since


def test_prompts_counted_larger_than_a_full_bucket_are_refused_and_charged_to_the_shared_buckets(redis_server):
    async def main():
        async with replicas(redis_server.url, rpm=0) as (a, b):
            ex = Exchange("rid", "POST", "/v1/completions", "203.0.113.7", key_id="key-a")
            gate = a.limits.admission_for(ex)
            await gate.admit_prompts(40, 0, 1, 1)  # estimated at 10 tokens: admitted
            with pytest.raises(APIError) as counted:
                gate.count_prompts(TPM + 1)
            await gate.settle()  # as the route does when the request fails before its response
            ex.close()
            with pytest.raises(APIError) as owing:  # the tokenising was done: the key owes it, on every replica
                await b.serve("key-a", 1, 1, 1)
            return counted.value, owing.value

    counted, owing = asyncio.run(main())
    assert counted.status == 429 and f"prompts are {TPM + 1} tokens" in counted.message
    assert owing.status == 429 and "tokens per minute" in owing.message


def test_prompt_ids_larger_than_a_full_bucket_are_refused_at_admission(redis_server):
    async def main():
        async with replicas(redis_server.url, count=1) as (a,):
            with pytest.raises(APIError) as ids:
                await a.admit("key-a", TPM + 1, 1)
            return ids.value, a.limits.admission.running

    err, running = asyncio.run(main())
    assert err.status == 429 and f"prompts are {TPM + 1} tokens" in err.message
    assert running == 0


def test_buckets_live_under_the_deployment_and_key_id_and_expire_once_full(redis_server):
    api_key = "sk-a-real-looking-secret-0123456789"

    async def main():
        async with replicas(redis_server.url, count=1) as (a,):
            await a.serve(key_id(api_key), 1, 1, 1)

    asyncio.run(main())
    r = redis.Redis.from_url(redis_server.url)
    names = [k.decode() for k in r.keys("*")]
    assert names == [key_prefix(DEPLOYMENT) + key_id(api_key)]
    assert names[0].startswith(f"llamaserve:{DEPLOYMENT}:rate:") and api_key not in names[0]
    # Full again after 60 / RPM s (the request bucket is the slower to refill): then nothing is worth keeping.
    assert 0 < r.pttl(names[0]) <= (60 / RPM + 1) * 1000


def test_a_dead_redis_fails_open_to_the_local_buckets_then_shared_limits_resume(redis_server):
    async def main():
        async with replicas(redis_server.url) as (a, b):
            await a.serve("key-a", 1, 1, 1)  # shared: one request of key-a's RPM used
            redis_server.stop()
            started = time.monotonic()
            # Each replica now enforces key-a's limits on its own buckets (full: they were never used).
            local = [await a.serve("key-a", 1, 1, 1) for _ in range(RPM)]
            with pytest.raises(APIError) as refused_locally:
                await a.serve("key-a", 1, 1, 1)
            calls_while_down = a.store.calls
            down_for = time.monotonic() - started
            assert down_for < RETRY_S, "the outage checks outlasted the retry time: no conclusion about calls"
            fallbacks = a.link.fallbacks["rate_limits"]
            redis_server.start()
            await asyncio.sleep(RETRY_S)  # the stated bound: Redis is tried again RETRY_S after the failed call
            back = await b.serve("key-c", 1, 1, 1)
            shared_again = await a.serve("key-c", 1, 1, 1)
            return (local, refused_locally.value, calls_while_down, fallbacks, back, shared_again,
                    a.link.healthy)

    local, refused, calls, fallbacks, back, shared_again, healthy = asyncio.run(main())
    assert all("x-ratelimit-remaining-requests" in h for h in local)
    assert refused.status == 429 and "requests per minute" in refused.message
    assert calls == 2  # the shared admission, then the one that found Redis dead; none while the breaker is open
    assert fallbacks == RPM + 1  # every admission the local buckets decided
    assert back["x-ratelimit-remaining-requests"] == str(RPM - 1)
    assert shared_again["x-ratelimit-remaining-requests"] == str(RPM - 2)  # B's charge, seen by A: shared again
    assert healthy


def test_a_hung_redis_costs_one_time_limit_then_none_until_the_retry(redis_server):
    async def main():
        async with replicas(redis_server.url, count=1) as (a,):
            await a.serve("key-a", 1, 1, 1)  # connected
            os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing, as a hung server
            try:
                timings = []
                for _ in range(3):
                    started = time.monotonic()
                    await a.serve("key-a", 1, 1, 1)
                    timings.append(time.monotonic() - started)
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            return timings

    first, *then = asyncio.run(main())
    # The first waits for the link's time limit (plus scheduling slack on a loaded machine); the others ask
    # the local buckets only.
    assert TIMEOUT_S <= first < TIMEOUT_S + 1.0
    assert all(t < 0.05 for t in then), then


def test_a_settlement_that_cannot_reach_redis_is_dropped_without_failing_the_request(redis_server):
    async def main():
        async with replicas(redis_server.url, count=1) as (a,):
            gate, ex = await a.admit("key-a", 10, 100)
            redis_server.stop()
            ex.completion_tokens = 5
            await gate.settle()
            ex.close()
            return a.link.fallbacks["rate_limits"], a.link.healthy

    fallbacks, healthy = asyncio.run(main())
    assert fallbacks == 1 and not healthy


def test_the_admission_benchmark_times_both_kinds_of_buckets_through_redis(redis_server):
    from bench.fleet_admission import run

    results = asyncio.run(run(redis_server.url, iterations=50, keys=5))
    assert set(results) == {"local", "redis"}
    for timings in results.values():
        assert timings["admit_p50_ms"] <= timings["admit_p99_ms"]
        assert timings["settle_p50_ms"] <= timings["settle_p99_ms"]
    # The state of the benchmark's keys is in Redis: its shared numbers are round trips, not the fallback's.
    assert redis.Redis.from_url(redis_server.url).exists(key_prefix("bench") + "bench-key-0")

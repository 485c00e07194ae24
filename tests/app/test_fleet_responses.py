"""The Responses store shared through Redis (server/fleet/responses.py), against a real redis-server: two stores on
two links stand for two replicas. Bounds shared by the fleet, owner scoping, expiry, replace, the 503 path while
Redis is killed or hung, and recovery when it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from server.fleet.link import RedisLink
from server.fleet.responses import RedisResponseStore, key_prefix
from server.settings import Settings
from server.state import ServerState
from server.store.responses import MemoryResponseStore, StoredResponse, StoreUnavailable
from tests.redis_server import redis_server  # noqa: F401 - the fixture

TIMEOUT_S = 0.25  # the link's limit per call (the setting's default)

ORDER_KEY = key_prefix("default") + "order"
ITEM_PREFIX = key_prefix("default") + "item:"


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def stored(i: int, created_at: float, owner: str | None = "key-a") -> StoredResponse:
    return StoredResponse(f"resp_{i}", owner, {"id": f"resp_{i}", "status": "completed"},
                          [{"id": f"msg_{i}", "role": "user", "content": f"turn {i}"}], created_at=created_at)


def replicas(url: str, count: int, max_count: int = 100, max_age_s: float = 3600, clock=time.time):
    return [RedisResponseStore(RedisLink(url, TIMEOUT_S), max_count, max_age_s, clock) for _ in range(count)]


async def close(*stores: RedisResponseStore) -> None:
    for store in stores:
        await store.link.close()


def test_a_response_stored_on_one_replica_is_read_and_deleted_on_another(redis_server):
    async def scenario():
        a, b = replicas(redis_server.url, 2)
        await a.put(stored(1, time.time()))
        got = await b.get("key-a", "resp_1")
        assert got is not None
        assert (got.id, got.owner, got.response, got.input_items) == (
            "resp_1", "key-a", {"id": "resp_1", "status": "completed"},
            [{"id": "msg_1", "role": "user", "content": "turn 1"}])
        assert await b.delete("key-a", "resp_1") is True
        assert await a.get("key-a", "resp_1") is None
        assert await a.delete("key-a", "resp_1") is False
        await close(a, b)

    asyncio.run(scenario())


def test_another_key_sees_nothing_and_cannot_delete(redis_server):
    async def scenario():
        a, b = replicas(redis_server.url, 2)
        await a.put(stored(1, time.time(), owner="key-a"))
        await a.put(stored(2, time.time(), owner=None))
        assert await b.get("key-b", "resp_1") is None
        assert await b.get(None, "resp_1") is None
        assert await b.delete("key-b", "resp_1") is False
        assert await b.delete(None, "resp_1") is False
        assert await b.get("key-a", "resp_1") is not None  # still there for its owner
        assert await b.get("key-a", "resp_2") is None  # a keyless server's response is no key's
        assert (await b.get(None, "resp_2")).owner is None
        assert await b.get("key-a", "resp_never") is None
        await close(a, b)

    asyncio.run(scenario())


def test_the_count_bound_is_the_fleets_and_evicts_the_oldest(redis_server):
    async def scenario():
        a, b = replicas(redis_server.url, 2, max_count=3)
        start = time.time()
        for i in range(6):  # the replicas take turns: each sees the other's writes in the bound
            await (a if i % 2 else b).put(stored(i, start + i))
        assert [await a.get("key-a", f"resp_{i}") is not None for i in range(6)] == [False] * 3 + [True] * 3
        raw = aioredis.Redis.from_url(redis_server.url)
        assert await raw.zrange(ORDER_KEY, 0, -1) == [b"resp_3", b"resp_4", b"resp_5"]
        assert sorted(await raw.keys(ITEM_PREFIX + "*")) == [f"{ITEM_PREFIX}resp_{i}".encode() for i in (3, 4, 5)]
        await raw.aclose()
        await close(a, b)

    asyncio.run(scenario())


def test_concurrent_writes_from_two_replicas_keep_the_bound_exactly(redis_server):
    async def scenario():
        a, b = replicas(redis_server.url, 2, max_count=5)
        start = time.time()
        await asyncio.gather(*[(a if i % 2 else b).put(stored(i, start + i)) for i in range(40)])
        raw = aioredis.Redis.from_url(redis_server.url)
        assert await raw.zcard(ORDER_KEY) == 5
        assert len(await raw.keys(ITEM_PREFIX + "*")) == 5
        await raw.aclose()
        assert [await b.get("key-a", f"resp_{i}") is not None for i in range(35, 40)] == [True] * 5
        await close(a, b)

    asyncio.run(scenario())


def test_replacing_a_response_keeps_its_place_and_the_count(redis_server):
    async def scenario():
        a, b = replicas(redis_server.url, 2, max_count=2)
        start = time.time()
        await a.put(stored(1, start))
        await a.put(stored(2, start + 1))
        later_state = stored(1, start)
        later_state.response = {"id": "resp_1", "status": "cancelled"}
        await b.put(later_state)
        assert (await a.get("key-a", "resp_1")).response["status"] == "cancelled"
        assert (await a.get("key-a", "resp_2")) is not None
        await b.put(stored(3, start + 2))  # the oldest by creation, resp_1, goes first
        assert await a.get("key-a", "resp_1") is None
        assert await a.get("key-a", "resp_2") is not None
        await close(a, b)

    asyncio.run(scenario())


def test_the_age_bound_expires_responses_by_clock_and_by_key_ttl(redis_server):
    async def scenario():
        clock = Clock()
        (store,) = replicas(redis_server.url, 1, max_age_s=60, clock=clock)
        await store.put(stored(1, clock.now))
        clock.now += 30
        await store.put(stored(2, clock.now))
        clock.now += 31
        assert await store.get("key-a", "resp_1") is None
        assert await store.get("key-a", "resp_2") is not None
        await store.put(stored(3, clock.now - 61))  # past the bound already: not stored at all
        raw = aioredis.Redis.from_url(redis_server.url)
        assert not await raw.exists(ITEM_PREFIX + "resp_3")
        # Redis itself drops a response when its age is up: its TTL is what was left of its age when stored.
        assert 55_000 < await raw.pttl(ITEM_PREFIX + "resp_2") <= 60_000  # stored at age 0 (margin: a slow host)
        await store.put(stored(4, clock.now - 59.7))
        assert 0 < await raw.pttl(ITEM_PREFIX + "resp_4") <= 300
        deadline = time.monotonic() + 5  # margin: the TTL is 0.3 s, Redis expires keys within ~0.1 s of it
        while await raw.exists(ITEM_PREFIX + "resp_4"):
            assert time.monotonic() < deadline, "the expired response's key is still in Redis"
            await asyncio.sleep(0.05)
        await raw.aclose()
        await close(store)

    asyncio.run(scenario())


def test_redis_killed_answers_store_unavailable_then_recovers_by_itself(redis_server):
    async def scenario():
        (store,) = replicas(redis_server.url, 1)
        await store.put(stored(1, time.time()))
        redis_server.stop()
        for call in (store.get("key-a", "resp_1"), store.put(stored(2, time.time())), store.delete("key-a", "resp_1")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await call
            assert time.monotonic() - started < TIMEOUT_S + 0.5  # margin: the event loop's scheduling on a busy host
        assert not store.link.healthy
        redis_server.start()  # an empty Redis on the same port, as after a crash without persistence
        await store.put(stored(3, time.time()))  # the first call after it is back succeeds
        assert store.link.healthy
        assert (await store.get("key-a", "resp_3")) is not None
        await close(store)

    asyncio.run(scenario())


def test_every_pooled_connection_recovers_after_a_restart_without_a_failed_call(redis_server):
    async def scenario():
        (store,) = replicas(redis_server.url, 1)
        await asyncio.gather(*[store.put(stored(i, time.time())) for i in range(8)])  # several pooled connections
        redis_server.stop()
        redis_server.start()  # no call in between: every pooled connection is the dead server's
        await asyncio.gather(*[store.put(stored(i, time.time())) for i in range(8, 16)])
        assert store.link.healthy
        await close(store)

    asyncio.run(scenario())


def test_a_hung_redis_answers_store_unavailable_within_the_time_limit(redis_server):
    async def scenario():
        (store,) = replicas(redis_server.url, 1)
        await store.put(stored(1, time.time()))
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.get("key-a", "resp_1")
            assert time.monotonic() - started < TIMEOUT_S + 0.5  # margin: the event loop's scheduling on a busy host
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5  # margin: the link's next call reconnects at once once Redis answers
        while True:
            try:
                assert (await store.get("key-a", "resp_1")) is not None
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover after Redis answered again"
                await asyncio.sleep(0.05)
        await close(store)

    asyncio.run(scenario())


def test_the_app_keeps_responses_in_redis_when_a_redis_url_is_set(redis_server, clean_env):
    assert isinstance(ServerState(settings=Settings()).responses, MemoryResponseStore)
    state = ServerState(settings=Settings(redis_url=redis_server.url, responses_store_max_count=7,
                                          responses_store_max_age_s=90))
    assert isinstance(state.responses, RedisResponseStore)
    assert (state.responses.link, state.responses.max_count, state.responses.max_age_s) == (state.fleet, 7, 90)


def test_with_redis_away_the_stored_routes_answer_503_and_generation_goes_on(redis_server):
    from tests.scripted_engine import InProcess, ScriptedEngine, settings

    async def go():
        async with InProcess(ScriptedEngine(), settings(redis_url=redis_server.url)) as c:
            body = {"input": "a", "max_output_tokens": 2}
            stored = (await c.post("/v1/responses", json=body)).json()
            redis_server.stop()
            away = await c.get(f"/v1/responses/{stored['id']}")
            continued = await c.post("/v1/responses", json={**body, "previous_response_id": stored["id"]})
            answered = await c.post("/v1/responses", json=body)
            redis_server.start()  # empty: this redis-server keeps nothing on disk
            again = (await c.post("/v1/responses", json=body)).json()
            back = await c.get(f"/v1/responses/{again['id']}")
            return again, away, continued, answered, back
    again, away, continued, answered, back = asyncio.run(go())
    for refused in (away, continued):
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable", refused.text
        assert refused.headers["retry-after"] == "1"
    assert answered.status_code == 200 and answered.json()["status"] == "incomplete"  # answered, not stored
    assert back.status_code == 200 and back.json()["id"] == again["id"]  # Redis is back: so is the store

"""The in-process Responses store (server/store/responses.py): scoped to the creating key, bounded by count and age."""

from __future__ import annotations

import asyncio

from server.store.responses import MemoryResponseStore, StoredResponse


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(i: int, clock: Clock, owner: str | None = "key-a") -> StoredResponse:
    return StoredResponse(f"resp_{i}", owner, {"id": f"resp_{i}"}, [], created_at=clock())


def test_another_key_sees_nothing_and_cannot_delete():
    clock = Clock()
    store = MemoryResponseStore(10, 3600, clock)
    asyncio.run(store.put(stored(1, clock)))
    assert asyncio.run(store.get("key-a", "resp_1")).response == {"id": "resp_1"}
    assert asyncio.run(store.get("key-b", "resp_1")) is None
    assert asyncio.run(store.get(None, "resp_1")) is None
    assert asyncio.run(store.delete("key-b", "resp_1")) is False
    assert asyncio.run(store.delete("key-a", "resp_1")) is True
    assert asyncio.run(store.get("key-a", "resp_1")) is None


def test_the_count_bound_evicts_the_oldest():
    clock = Clock()
    store = MemoryResponseStore(3, 3600, clock)
    for i in range(5):
        clock.now += 1
        asyncio.run(store.put(stored(i, clock)))
    assert len(store) == 3
    assert [asyncio.run(store.get("key-a", f"resp_{i}")) is not None for i in range(5)] == [False, False, True, True,
                                                                                             True]


def test_replacing_a_response_keeps_its_place_and_the_count():
    clock = Clock()
    store = MemoryResponseStore(2, 3600, clock)
    asyncio.run(store.put(stored(1, clock)))
    asyncio.run(store.put(stored(2, clock)))
    newer_state = stored(1, clock)
    newer_state.response = {"id": "resp_1", "status": "completed"}
    asyncio.run(store.put(newer_state))
    assert len(store) == 2
    asyncio.run(store.put(stored(3, clock)))  # the oldest by creation, resp_1, goes first
    assert asyncio.run(store.get("key-a", "resp_1")) is None
    assert asyncio.run(store.get("key-a", "resp_2")) is not None


def test_the_age_bound_expires_responses():
    clock = Clock()
    store = MemoryResponseStore(10, 60, clock)
    asyncio.run(store.put(stored(1, clock)))
    clock.now += 30
    asyncio.run(store.put(stored(2, clock)))
    clock.now += 31
    assert asyncio.run(store.get("key-a", "resp_1")) is None
    assert asyncio.run(store.get("key-a", "resp_2")) is not None
    assert len(store) == 1

"""Whose guard checks these are: a check is the requester's work, so one key's checks run a few at a time
(`KeySlots`) and their tokens are taken from that key's token limit (`Requester.charge`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

Charge = Callable[[int], None]  # takes a check's tokens from the requester's token limit


@dataclass(frozen=True)
class Requester:
    """Whose checks these are: the key (or address) the rate limits know, and how to charge it."""

    identity: str
    charge: Charge


class KeySlots:
    """At most `limit` holders at once per key; a key's entry lives while it has holders or waiters."""

    def __init__(self, limit: int):
        self._limit = limit
        self._keys: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        slots, users = self._keys.get(key) or (asyncio.Semaphore(self._limit), 0)
        self._keys[key] = (slots, users + 1)
        try:
            async with slots:
                yield
        finally:
            slots, users = self._keys[key]
            if users == 1:
                del self._keys[key]
            else:
                self._keys[key] = (slots, users - 1)

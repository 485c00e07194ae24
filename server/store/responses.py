"""The Responses store: what `store: true` keeps, for `GET /v1/responses/{id}`, `input_items` and
`previous_response_id`.

One interface, two homes: `MemoryResponseStore` (one replica, the default) and a shared one that every replica of a
fleet reads (Redis, server/fleet/). A stored response belongs to the API key that created it: every lookup names
its owner, and another key's id is as unknown as one never stored. Both homes are bounded by count and by age, so
the store cannot grow without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol


class StoreUnavailable(Exception):
    """The shared store cannot be reached now: a stored response's route answers 503, generation goes on."""


@dataclass
class StoredResponse:
    """One stored response. `response` is the response object as the API returns it (JSON-ready); `input_items`
    the whole input the model saw for it, with ids: a `previous_response_id` chain replayed, then this request's own
    items, so that continuing from it needs this record alone (earlier ones may have been evicted since)."""

    id: str
    owner: str | None  # the creating key's id; None on a server without keys
    response: dict
    input_items: list[dict]
    created_at: float = field(default_factory=time.time)


class ResponseStore(Protocol):
    async def put(self, item: StoredResponse) -> None:
        """Stores or replaces (a background response's later states) `item`, evicting past the bounds."""

    async def get(self, owner: str | None, response_id: str) -> StoredResponse | None:
        """The response if it exists, is `owner`'s and has not expired; else None."""

    async def delete(self, owner: str | None, response_id: str) -> bool:
        """True if `owner`'s response was there and is gone now."""


class MemoryResponseStore:
    """The in-process store: at most `max_count` responses, none older than `max_age_s`; the oldest go first."""

    def __init__(self, max_count: int, max_age_s: float, clock=time.time):
        self.max_count = max_count
        self.max_age_s = max_age_s
        self._clock = clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def _evict(self) -> None:
        cutoff = self._clock() - self.max_age_s
        while self._items:
            oldest = next(iter(self._items.values()))
            if len(self._items) <= self.max_count and oldest.created_at >= cutoff:
                break
            self._items.popitem(last=False)

    async def put(self, item: StoredResponse) -> None:
        # A replaced response (a background one's later state) keeps its place in line: the order is creation's.
        self._items[item.id] = item
        self._evict()

    async def get(self, owner: str | None, response_id: str) -> StoredResponse | None:
        self._evict()
        item = self._items.get(response_id)
        return item if item is not None and item.owner == owner else None

    async def delete(self, owner: str | None, response_id: str) -> bool:
        if await self.get(owner, response_id) is None:
            return False
        del self._items[response_id]
        return True

    def __len__(self) -> int:
        return len(self._items)

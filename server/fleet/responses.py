"""The Responses store shared by the fleet: a response stored on one replica is read, continued or deleted on any.

Each response is a Redis hash (its owner's tag and its JSON) that expires when its age bound does (a key TTL from
its creation time), and its id sits in one sorted set by creation time. A write and the trim of that set to the
count bound are one Lua script, so one round trip, and two replicas writing at once cannot both keep their oldest:
the bound holds for the fleet, not per replica. Every read and delete checks the owner, so another key's id is as
unknown as one never stored. The keys share one hash tag, so a Redis Cluster keeps them in one slot.

When the link says Redis is down, every call raises `StoreUnavailable` (the route answers 503); the link's next
call reconnects, so the store recovers by itself when Redis is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from server.fleet.link import RedisDown, RedisLink
from server.store.responses import StoredResponse, StoreUnavailable



def key_prefix(deployment: str) -> str:
    """The deployment's responses, in one hash slot (the Lua scripts touch the order set and an item together)."""
    return "llamaserve:{" + deployment + ":responses}:"

# KEYS: the order set, the item. ARGV: id, owner tag, JSON, created_at, item TTL (ms), count bound, item key prefix,
# age cutoff (created_at below it has expired), the order set's TTL (ms).
_PUT = """
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[8])) do
  redis.call('DEL', ARGV[7] .. old)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[8])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    redis.call('DEL', ARGV[7] .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return excess
"""

# KEYS: the order set, the item. ARGV: id, owner tag. 1 if the owner's item was there and is gone now.
_DELETE = """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


def owner_tag(owner: str | None) -> str:
    """The owner as stored: a key id, or `-` on a server without keys (key ids are hex, never `-`)."""
    return "-" if owner is None else "key:" + owner


class RedisResponseStore:
    """At most `max_count` responses across the fleet, none older than `max_age_s`; the oldest go first."""

    def __init__(self, link: RedisLink, max_count: int, max_age_s: float, clock: Callable[[], float] = time.time,
                 deployment: str = "default"):
        self.link = link
        self.order_key = key_prefix(deployment) + "order"
        self.item_prefix = key_prefix(deployment) + "item:"
        self.max_count = max_count
        self.max_age_s = max_age_s
        self._clock = clock
        self._put = link.client.register_script(_PUT)
        self._delete = link.client.register_script(_DELETE)

    async def put(self, item: StoredResponse) -> None:
        now = self._clock()
        ttl_ms = int((item.created_at + self.max_age_s - now) * 1000)
        if ttl_ms <= 0:  # older than the age bound already: storing it would keep what the bound forbids
            return
        data = json.dumps({"id": item.id, "response": item.response, "input_items": item.input_items,
                           "created_at": item.created_at}, separators=(",", ":"))
        args = [item.id, owner_tag(item.owner), data, repr(item.created_at), ttl_ms, self.max_count, self.item_prefix,
                repr(now - self.max_age_s), int(self.max_age_s * 1000)]
        await self._call(lambda client: self._put(keys=[self.order_key, self.item_prefix + item.id], args=args, client=client))

    async def get(self, owner: str | None, response_id: str) -> StoredResponse | None:
        fields = await self._call(lambda client: client.hgetall(self.item_prefix + response_id))
        if not fields or fields.get(b"owner", b"").decode() != owner_tag(owner):
            return None
        record = json.loads(fields[b"data"])
        # The TTL is the bound; this check covers the TTL's rounding and a replica whose clock runs ahead.
        if record["created_at"] < self._clock() - self.max_age_s:
            return None
        return StoredResponse(record["id"], owner, record["response"], record["input_items"], record["created_at"])

    async def delete(self, owner: str | None, response_id: str) -> bool:
        deleted = await self._call(lambda client: self._delete(
            keys=[self.order_key, self.item_prefix + response_id], args=[response_id, owner_tag(owner)], client=client))
        return bool(deleted)

    async def _call(self, operation):
        try:
            return await self.link.call(operation)
        except RedisDown as exc:
            raise StoreUnavailable(f"the shared response store (Redis) is unreachable: {exc}") from exc

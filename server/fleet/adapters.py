"""Runtime LoRA adapters shared by the fleet: a load or unload through any replica's admin route is recorded in
Redis, and every replica applies the recorded set within about one poll interval.

The record is one hash per deployment: `adapter:<name>` -> the operator's source and the revision that recorded
it, a `version` that every change raises, and an `epoch` set when the record is created. Each replica reads the two
small fields every `adapter_sync_interval_s`, and the whole hash only when they moved; it then loads, through the
same path as the admin route, every recorded adapter whose revision it has not applied (so each replica resolves
and validates the adapter itself, and one that fails on it is logged and left out there), and unloads the ones it
applied from the record that the record no longer lists. Adapters the replica has from elsewhere (named at start,
or loaded while Redis was away) are never unloaded by the record, only replaced when it names them.

Redis away: an admin call still acts on its replica and says it could not share it; the record is unchanged and
stays the truth; replicas keep what they have. A new epoch (Redis lost its data) makes every adapter applied so far
the replica's own, so an empty record unloads nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from engine.adapters import Adapter, AdapterExists, AdapterNotFound, InvalidAdapter
from engine.core import LlamaEngine
from engine.errors import EngineUnavailable
from server.fleet.link import RedisDown, RedisLink
from server.models import adapters

log = logging.getLogger("llamaserve.fleet")
_FIELD = "adapter:"

# KEYS: the record. ARGV: name, source (empty: unload), the epoch of a record created now.
# Returns {epoch, revision}; revision 0 for an unload of a name the record does not list.
_RECORD = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local field = 'adapter:' .. ARGV[1]
if ARGV[2] == '' and redis.call('HDEL', KEYS[1], field) == 0 then
  return {epoch, 0}
end
local revision = redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], field, cjson.encode({source = ARGV[2], revision = revision}))
end
return {epoch, revision}
"""


@dataclass(frozen=True)
class Recorded:
    source: str
    revision: int


def record_key(deployment: str) -> str:
    return "llamaserve:{" + deployment + ":adapters}"


def parse_record(fields: dict[bytes, bytes]) -> tuple[str | None, dict[str, Recorded]]:
    """The record's epoch and adapters from its hash."""
    epoch = fields.get(b"epoch")
    recorded = {}
    for field, value in fields.items():
        name = field.decode()
        if name.startswith(_FIELD):
            entry = json.loads(value)
            recorded[name[len(_FIELD):]] = Recorded(entry["source"], int(entry["revision"]))
    return (epoch.decode() if epoch else None), recorded


class SharedAdapters:
    """This replica's side of the record: what it applied from it, and the admin calls that change it."""

    def __init__(self, link: RedisLink, interval_s: float, deployment: str | None = None):
        self.link = link
        self.deployment = deployment  # the name the fleet's state is kept under; None: the served model's
        self.interval_s = interval_s
        self.epoch: str | None = None
        self.applied: dict[str, int] = {}  # adapter name -> the revision of the record applied here
        self._seen: tuple[bytes | None, bytes | None] | None = None  # (epoch, version) last applied
        self._lock = asyncio.Lock()  # an admin call and a sync never interleave

    # --- the admin routes

    async def load(self, engine: LlamaEngine, name: str, source: str, replace: bool) -> tuple[Adapter, bool]:
        """Loads here (errors are the caller's, as without a fleet), then records it. True: the fleet has it."""
        async with self._lock:
            adapter = await adapters.load(engine, name, source, replace)
            try:
                epoch, revision = await self._record(engine, name, source)
            except RedisDown:
                log.warning("adapter %s loaded on this replica only: the fleet's Redis is unreachable", name)
                return adapter, False
            self._adopt(epoch)
            self.applied[name] = revision
            return adapter, True

    async def unload(self, engine: LlamaEngine, name: str) -> bool:
        """Unloads here and from the record; AdapterNotFound if neither had it. True: the fleet drops it too."""
        async with self._lock:
            try:
                await engine.unload_adapter(name)
                here = True
            except AdapterNotFound:
                here = False
            self.applied.pop(name, None)  # whatever the record says next is applied again
            try:
                epoch, revision = await self._record(engine, name, "")
            except RedisDown:
                if not here:
                    raise AdapterNotFound(f"no adapter named {name!r} is loaded here, and the fleet's Redis is "
                                          "unreachable: other replicas may still have it") from None
                log.warning("adapter %s unloaded on this replica only: the fleet's Redis is unreachable", name)
                return False
            self._adopt(epoch)
            if not here and revision == 0:
                raise AdapterNotFound(f"no adapter named {name!r} is loaded")
            return True

    async def _record(self, engine: LlamaEngine, name: str, source: str) -> tuple[str, int]:
        keys, args = [record_key(self.deployment or engine.info.name)], [name, source, uuid.uuid4().hex]
        epoch, revision = await self.link.call(lambda client: client.eval(_RECORD, 1, *keys, *args))
        return epoch.decode(), int(revision)

    # --- applying the record

    async def sync(self, engine: LlamaEngine) -> None:
        """One poll: applies the record if it changed since the last one. RedisDown if Redis is away."""
        key = record_key(self.deployment or engine.info.name)
        seen = tuple(await self.link.call(lambda client: client.hmget(key, "epoch", "version")))
        if seen == self._seen:
            return
        async with self._lock:  # read under the lock: a record read before an admin call's would undo it here
            fields = await self.link.call(lambda client: client.hgetall(key))
            epoch, recorded = parse_record(fields)
            self._adopt(epoch)
            await self._apply(engine, recorded)
            self._seen = (fields.get(b"epoch"), fields.get(b"version"))

    async def catch_up(self, engine: LlamaEngine) -> None:
        """The record's adapters, before the replica turns ready; with Redis away it starts with its own."""
        try:
            await self.sync(engine)
        except RedisDown:
            log.warning("the fleet's adapter record is unreachable: starting without its adapters, applied when "
                        "Redis is back")

    def _adopt(self, epoch: str | None) -> None:
        if epoch != self.epoch:
            if self.applied:
                log.warning("the fleet's adapter record is new (Redis lost its data?): adapters %s stay loaded here "
                            "as this replica's own", ", ".join(sorted(self.applied)))
            self.applied.clear()
            self.epoch = epoch

    async def _apply(self, engine: LlamaEngine, recorded: dict[str, Recorded]) -> None:
        for name, entry in recorded.items():
            if self.applied.get(name) == entry.revision:
                continue
            self.applied[name] = entry.revision  # tried once per revision: a failure here is this replica's
            try:
                await adapters.load(engine, name, entry.source, replace=engine.adapters.get(name) is not None)
                log.info("adapter %s loaded from the fleet's record (%s)", name, entry.source)
            except (AdapterNotFound, AdapterExists, InvalidAdapter) as exc:
                log.warning("adapter %s from the fleet's record (%s) does not load on this replica: %s",
                            name, entry.source, exc)
        for name in [n for n in self.applied if n not in recorded]:
            del self.applied[name]
            if engine.adapters.get(name) is not None:
                await engine.unload_adapter(name)
                log.info("adapter %s unloaded: the fleet's record dropped it", name)

    async def run(self, ready_engine: Callable[[], LlamaEngine | None]) -> None:
        """Polls until cancelled. `ready_engine()` is the engine once it serves, else None."""
        while True:
            engine = ready_engine()
            if engine is not None:
                try:
                    await self.sync(engine)
                except RedisDown:
                    pass  # the link logs the outage once; the replica keeps what it has
                except EngineUnavailable:
                    pass  # the watchdog ends the server
                except Exception:  # noqa: BLE001 - the poll must outlive one bad record or reply
                    log.exception("applying the fleet's adapter record failed; retrying at the next poll")
            await asyncio.sleep(self.interval_s)

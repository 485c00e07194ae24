"""Runtime LoRA adapters shared by the fleet (server/fleet/adapters.py), in process: two or three apps on scripted
engines stand for replicas, sharing a real redis-server. The record's rules: loads, replaces and unloads through one
replica applied by the others, a late replica catching up, each replica validating for itself, adapters from
elsewhere left alone, and Redis away or emptied. On two real servers: tests/server/test_fleet_lora.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import redis.asyncio as aioredis

from engine.adapters import Adapter, AdapterExists, InvalidAdapter
from server.fleet.adapters import record_key
from tests.redis_server import redis_server  # noqa: F401 - the fixture
from tests.scripted_engine import InProcess, ScriptedEngine, settings

POLL_S = 0.05  # the replicas' poll interval here
APPLIED_WITHIN_S = 5.0  # margin: many polls, on a host shared by other test runs
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"


class AdapterEngine(ScriptedEngine):
    """A scripted engine that loads an adapter when its directory holds an adapter_config.json, as the real one
    checks the files before vLLM sees them; `loads` counts the loads done, replacements included."""

    def __init__(self):
        super().__init__()
        self.loads = 0
        self.shared = None  # its replica's SharedAdapters, set by `replicas`

    async def load_adapter(self, name: str, path: str, source: str, replace: bool = False) -> Adapter:
        async with self.adapters.lock:
            old = self.adapters.get(name)
            if old is not None and not replace:
                raise AdapterExists(f"an adapter named {name!r} is loaded already")
            if not (Path(path) / "adapter_config.json").is_file():
                raise InvalidAdapter(f"no adapter_config.json in {path}")
            adapter = Adapter(name, old.id if old else self.adapters.new_id(), path, source, 8, None)
            self.adapters.put(adapter)
            self.loads += 1
            return adapter

    async def unload_adapter(self, name: str) -> Adapter:
        async with self.adapters.lock:
            return self.adapters.pop(name)

    def sources(self) -> dict[str, str]:
        return {a.name: a.source for a in self.adapters.all()}


def adapter_dir(root: Path, name: str) -> str:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "adapter_config.json").write_text("{}")
    return str(root / name)


def replica_settings(url: str, **fields):
    return settings(**{"allow_runtime_lora": True, "redis_url": url, "adapter_sync_interval_s": POLL_S, **fields})


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + APPLIED_WITHIN_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {APPLIED_WITHIN_S}s: {what}"
        await asyncio.sleep(POLL_S / 2)


@contextlib.asynccontextmanager
async def replicas(url: str, count: int, **fields):
    engines = [AdapterEngine() for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        processes = [InProcess(e, replica_settings(url, **fields)) for e in engines]
        clients = [await stack.enter_async_context(p) for p in processes]
        for engine, process in zip(engines, processes):
            engine.shared = process.app.state.llama.shared_adapters
        yield list(zip(clients, engines))


class PollCounter:
    """Counts a replica's polls of the record, so a test can wait for some to have run (an event, not a time)."""

    def __init__(self, engine: AdapterEngine):
        self.count = 0
        shared = engine.shared
        real_sync = shared.sync

        async def counted(engine):
            try:
                return await real_sync(engine)
            finally:
                self.count += 1

        shared.sync = counted

    async def wait(self, polls: int) -> None:
        target = self.count + polls
        await until(lambda: self.count >= target, f"{polls} polls")


def test_a_load_through_one_replica_is_applied_by_the_others_and_so_is_the_unload(redis_server, tmp_path, clean_env):
    path = adapter_dir(tmp_path, "support")

    async def scenario():
        async with replicas(redis_server.url, 2) as [(a, engine_a), (b, engine_b)]:
            r = await a.post(LOAD, json={"lora_name": "support", "lora_path": path})
            assert r.status_code == 200, r.text
            assert r.json()["shared"] is True and "only" not in r.json()["message"]
            await until(lambda: engine_b.sources() == {"support": path}, "B loads what A recorded")
            assert "support" in {m["id"] for m in (await b.get("/v1/models")).json()["data"]}
            r = await a.post(UNLOAD, json={"lora_name": "support"})
            assert r.status_code == 200 and r.json()["shared"] is True
            await until(lambda: engine_b.sources() == {}, "B unloads what A dropped")
            assert engine_a.sources() == {}
            assert (await a.post(UNLOAD, json={"lora_name": "support"})).status_code == 404

    asyncio.run(scenario())


def test_an_unload_through_a_replica_without_the_adapter_still_drops_it_from_the_fleet(redis_server, tmp_path,
                                                                                       clean_env):
    path = adapter_dir(tmp_path, "support")

    async def scenario():
        async with replicas(redis_server.url, 2) as [(a, engine_a), (b, engine_b)]:
            await a.post(LOAD, json={"lora_name": "support", "lora_path": path})
            await until(lambda: "support" in engine_b.sources(), "B loads it")
            await engine_b.unload_adapter("support")  # gone from B alone (e.g. an earlier local unload)
            r = await b.post(UNLOAD, json={"lora_name": "support"})
            assert r.status_code == 200 and r.json()["shared"] is True
            await until(lambda: engine_a.sources() == {}, "A unloads what B dropped")

    asyncio.run(scenario())


def test_a_replace_is_applied_again_and_a_late_replica_loads_the_record_before_it_is_ready(redis_server, tmp_path,
                                                                                          clean_env):
    first, second = adapter_dir(tmp_path, "v1"), adapter_dir(tmp_path, "v2")

    async def scenario():
        async with replicas(redis_server.url, 2) as [(a, _), (b, engine_b)]:
            await a.post(LOAD, json={"lora_name": "support", "lora_path": first})
            await until(lambda: engine_b.sources() == {"support": first}, "B loads v1")
            assert (await a.post(LOAD, json={"lora_name": "support", "lora_path": first})).status_code == 409
            r = await a.post(LOAD, json={"lora_name": "support", "lora_path": second, "load_inplace": True})
            assert r.status_code == 200, r.text
            await until(lambda: engine_b.sources() == {"support": second}, "B replaces it with v2")
            loads = engine_b.loads
            r = await a.post(LOAD, json={"lora_name": "support", "lora_path": second, "load_inplace": True})
            assert r.status_code == 200  # the same path again: new files there, so every replica reads it again
            await until(lambda: engine_b.loads == loads + 1, "B reloads it")
            late = AdapterEngine()
            async with InProcess(late, replica_settings(redis_server.url)):  # returns once the engine serves
                assert late.sources() == {"support": second}

    asyncio.run(scenario())


def test_each_replica_validates_for_itself_and_tries_a_revision_once(redis_server, tmp_path, clean_env):
    path = adapter_dir(tmp_path, "support")

    async def scenario():
        async with replicas(redis_server.url, 2) as [(a, engine_a), (b, engine_b)]:
            real_load = engine_b.load_adapter
            refused = []

            async def refuse(name, *args, **kwargs):
                refused.append(name)
                raise InvalidAdapter("this replica cannot use it")

            engine_b.load_adapter = refuse
            assert (await a.post(LOAD, json={"lora_name": "support", "lora_path": path})).status_code == 200
            await until(lambda: refused == ["support"], "B tries it")
            engine_b.load_adapter = real_load
            other = adapter_dir(tmp_path, "other")
            await a.post(LOAD, json={"lora_name": "other", "lora_path": other})  # a new version of the record
            await until(lambda: "other" in engine_b.sources(), "B loads the next one")
            assert refused == ["support"] and "support" not in engine_b.sources()  # not retried every poll
            assert engine_a.sources() == {"support": path, "other": other}

    asyncio.run(scenario())


def test_adapters_from_elsewhere_are_never_unloaded_by_the_record(redis_server, tmp_path, clean_env):
    configured, runtime = adapter_dir(tmp_path, "configured"), adapter_dir(tmp_path, "runtime")

    async def scenario():
        async with replicas(redis_server.url, 2, lora_adapters={"configured": configured}) as [(a, _), (b, engine_b)]:
            assert engine_b.sources() == {"configured": configured}
            await a.post(LOAD, json={"lora_name": "runtime", "lora_path": runtime})
            await until(lambda: "runtime" in engine_b.sources(), "B loads the runtime one")
            await a.post(UNLOAD, json={"lora_name": "runtime"})
            await until(lambda: "runtime" not in engine_b.sources(), "B unloads it")
            assert engine_b.sources() == {"configured": configured}

    asyncio.run(scenario())


def test_with_redis_away_a_call_acts_locally_and_says_so_and_replicas_keep_what_they_have(redis_server, tmp_path,
                                                                                         clean_env):
    shared, local = adapter_dir(tmp_path, "shared"), adapter_dir(tmp_path, "local")

    async def scenario():
        async with replicas(redis_server.url, 2) as [(a, engine_a), (b, engine_b)]:
            await a.post(LOAD, json={"lora_name": "shared", "lora_path": shared})
            await until(lambda: "shared" in engine_b.sources(), "B loads it")
            b_polls = PollCounter(engine_b)
            redis_server.stop()
            r = await a.post(LOAD, json={"lora_name": "local", "lora_path": local})
            assert r.status_code == 200, r.text
            assert r.json()["shared"] is False and "On this replica only" in r.json()["message"]
            assert engine_a.sources() == {"shared": shared, "local": local}
            r = await a.post(UNLOAD, json={"lora_name": "nothing-here"})
            assert r.status_code == 404 and "unreachable" in r.json()["error"]["message"]
            await b_polls.wait(3)  # polls that fail while Redis is away: B must not lose what it has
            assert engine_b.sources() == {"shared": shared}
            redis_server.start()  # empty: a Redis without persistence lost the record
            await b_polls.wait(3)  # polls that see the empty record: nothing is unloaded for it
            assert engine_b.sources() == {"shared": shared}
            assert engine_a.sources() == {"shared": shared, "local": local}
            r = await a.post(LOAD, json={"lora_name": "local", "lora_path": local, "load_inplace": True})
            assert r.status_code == 200 and r.json()["shared"] is True  # repeated once Redis is back
            await until(lambda: "local" in engine_b.sources(), "B loads the one shared now")
            assert engine_b.sources() == {"shared": shared, "local": local}  # the lost record's stays

    asyncio.run(scenario())


def test_a_replica_starting_while_redis_is_away_serves_and_follows_the_record_once_it_is_back(redis_server, tmp_path,
                                                                                             clean_env):
    path = adapter_dir(tmp_path, "support")

    async def scenario():
        async with replicas(redis_server.url, 1) as [(a, _)]:
            redis_server.stop()
            late = AdapterEngine()
            async with InProcess(late, replica_settings(redis_server.url)) as c:  # returns once the engine serves
                assert (await c.get("/ready")).status_code == 200
                assert late.sources() == {}
                redis_server.start()
                r = await a.post(LOAD, json={"lora_name": "support", "lora_path": path})
                assert r.status_code == 200 and r.json()["shared"] is True
                await until(lambda: late.sources() == {"support": path}, "the late replica applies the record")

    asyncio.run(scenario())


def test_a_poll_during_an_admin_load_does_not_undo_it(redis_server, tmp_path, clean_env):
    path = adapter_dir(tmp_path, "support")

    async def scenario():
        engine = AdapterEngine()
        release, entered = asyncio.Event(), asyncio.Event()
        real_load = engine.load_adapter

        async def gated(*args, **kwargs):
            entered.set()
            await release.wait()
            return await real_load(*args, **kwargs)

        # No background polls here: the test runs the one poll that overlaps the load.
        app = InProcess(engine, replica_settings(redis_server.url, adapter_sync_interval_s=3600))
        async with app as client:
            shared = app.app.state.llama.shared_adapters
            other = adapter_dir(tmp_path, "other")
            assert (await client.post(LOAD, json={"lora_name": "other", "lora_path": other})).status_code == 200
            engine.load_adapter = gated
            raw = aioredis.Redis.from_url(redis_server.url)
            await raw.hincrby(record_key(engine.info.name), "version", 1)  # another replica's change, to be read
            await raw.aclose()
            load = asyncio.create_task(client.post(LOAD, json={"lora_name": "support", "lora_path": path}))
            await entered.wait()  # the admin call holds the replica's side of the record while it loads
            answered = []
            real_call = shared.link.call

            async def traced(operation):
                result = await real_call(operation)
                answered.append(result)
                return result

            shared.link.call = traced
            poll = asyncio.create_task(shared.sync(engine))
            await until(lambda: answered, "the poll sees the record changed")  # then it reads the record, or waits
            release.set()
            assert (await load).status_code == 200
            await poll
            assert engine.sources() == {"other": other, "support": path}

    asyncio.run(scenario())


def test_without_runtime_loading_a_fleet_replica_does_not_follow_the_record(redis_server, clean_env):
    from server.state import ServerState

    assert ServerState(settings=replica_settings(redis_server.url)).shared_adapters is not None
    off = settings(redis_url=redis_server.url)
    assert ServerState(settings=off).shared_adapters is None
    assert ServerState(settings=settings(allow_runtime_lora=True)).shared_adapters is None

"""The completion routes on buckets shared through Redis: two apps (two replicas) behind one real redis-server, on
the scripted engine. A full response's headers show the shared state after its settlement, a stream is settled in
Redis after its last frame, the app's end waits for settlements on their way and closes the link, and /metrics
says whether Redis is up and what was done without it."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
import redis

from tests.probes import metric
from tests.redis_server import redis_server  # noqa: F401  (the fixture)
from tests.scripted_engine import InProcess, ScriptedEngine, settings

RPM, TPM = 3, 5000
DEPLOYMENT = "routes-test"
KEY_ID = "addr:127.0.0.1"  # no API keys: the buckets are the client address's
BUCKETS = f"llamaserve:{DEPLOYMENT}:rate:{KEY_ID}"
IDS = {"prompt": [1, 2, 3], "max_tokens": 5}  # 3 + 5 tokens reserved, 3 + 5 used


def _replica_settings(url: str, **fields):
    return settings(rate_limit_rpm=RPM, rate_limit_tpm=TPM, redis_url=url, redis_deployment=DEPLOYMENT, **fields)


def _tokens_level(url: str) -> float:
    return float(redis.Redis.from_url(url).hget(BUCKETS, "t"))


def test_full_responses_show_the_shared_buckets_after_their_settlement(redis_server):
    async def main():
        async with AsyncExitStack() as stack:
            a, b = [await stack.enter_async_context(InProcess(ScriptedEngine(), _replica_settings(redis_server.url)))
                    for _ in range(2)]
            return [await (a if i % 2 == 0 else b).post("/v1/completions", json=IDS) for i in range(RPM + 1)]

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * RPM + [429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses[:RPM]] == ["2", "1", "0"]
    for i, r in enumerate(responses[:RPM]):  # 8 tokens a request, settled; refilled a little meanwhile
        assert TPM - 8 * (i + 1) <= int(r.headers["x-ratelimit-remaining-tokens"]) <= TPM - 8 * (i + 1) + 10
    assert responses[RPM].json()["error"]["code"] == "rate_limit_exceeded"


def test_a_stream_is_settled_in_redis_after_its_last_frame_and_the_end_waits_for_it(redis_server):
    # Reserved on its estimate, 100 + 10; counted 400; used 400 + 10.
    body = {"prompt": "a" * 400, "max_tokens": 10, "stream": True}

    async def main():
        replica = InProcess(ScriptedEngine(), _replica_settings(redis_server.url))
        async with replica as client:
            resp = await client.post("/v1/completions", json=body)
            assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]")
        return replica.app.state.llama.fleet

    link = asyncio.run(main())
    # The app ended right after the stream: its settlement was on its way, and done before the link closed.
    # Unsettled, the bucket would hold TPM - 110; it refills TPM / 60 a second (40: half a second of slack).
    assert TPM - 410 <= _tokens_level(redis_server.url) <= TPM - 410 + 40
    clients = redis.Redis.from_url(redis_server.url).client_list()
    assert len(clients) == 1, clients  # only this check's own connection: the app's link is closed
    assert link.healthy


def test_metrics_say_whether_redis_is_up_and_what_was_done_without_it(redis_server):
    async def main():
        async with InProcess(ScriptedEngine(), _replica_settings(redis_server.url)) as client:
            assert (await client.post("/v1/completions", json=IDS)).status_code == 200
            up = (await client.get("/metrics")).text
            redis_server.stop()
            assert (await client.post("/v1/completions", json=IDS)).status_code == 200  # fails open
            down = (await client.get("/metrics")).text
            return up, down

    up, down = asyncio.run(main())
    assert metric(up, "llamaserve_shared_state_up") == 1
    assert metric(down, "llamaserve_shared_state_up") == 0
    assert metric(down, "llamaserve_shared_state_fallbacks_total", concern="rate_limits") == 1


def test_without_a_redis_url_the_limits_stay_in_process():
    async def main():
        replica = InProcess(ScriptedEngine(), settings(rate_limit_rpm=RPM, rate_limit_tpm=TPM))
        async with replica as client:
            assert (await client.post("/v1/completions", json=IDS)).status_code == 200
            return replica.app.state.llama, (await client.get("/metrics")).text

    state, text = asyncio.run(main())
    assert state.fleet is None and state.limits.shared is None
    assert metric(text, "llamaserve_shared_state_up") is None


@pytest.mark.parametrize("name, expected", [({"redis_deployment": "eu-prod"}, "eu-prod"),
                                            ({"served_model_name": "llama-8b"}, "llama-8b"),
                                            ({}, "default")])
def test_the_deployment_names_the_keys(name, expected):
    assert settings(**name).shared_state_name() == expected

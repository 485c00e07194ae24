"""The admission latency that shared rate limits add: `python -m bench.fleet_admission [--redis-url URL]`.

Times a request's way through the rate limits in process, as the routes take it (admission before the prompt is
tokenised, the exact count, the settlement), on this replica's own buckets and on buckets shared through Redis
(one round trip to admit, one to settle). Without --redis-url it starts a local redis-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager

from server.fleet.link import RedisLink
from server.fleet.rates import RedisBuckets
from server.observe.exchange import Exchange
from server.protection.limits import Limits
from server.settings import Settings


@contextmanager
def local_redis():
    if shutil.which("redis-server") is None:
        raise SystemExit("no redis-server on PATH: pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="llamaserve-bench-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
                              ).stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(limits: Limits, iterations: int, keys: int) -> tuple[list[float], list[float]]:
    """Per request: seconds to admit, seconds to settle."""
    admit, settle = [], []
    for i in range(iterations):
        ex = Exchange("rid", "POST", "/v1/chat/completions", "203.0.113.7", key_id=f"bench-key-{i % keys}")
        gate = limits.admission_for(ex)
        started = time.perf_counter()
        await gate.admit_prompts(400, 0, 256, 1)
        admitted = time.perf_counter()
        gate.count_prompts(110)
        ex.completion_tokens = 200
        before_settling = time.perf_counter()
        await gate.settle()
        settled = time.perf_counter()
        ex.close()
        admit.append(admitted - started)
        settle.append(settled - before_settling)
    return admit, settle


async def run(url: str, iterations: int, keys: int) -> dict:
    settings = Settings(rate_limit_rpm=1_000_000, rate_limit_tpm=1_000_000_000)
    local = Limits(settings)
    shared = Limits(settings)
    link = RedisLink(url, settings.redis_timeout_s)
    shared.share(RedisBuckets(link, "bench"), settings.rate_limit_fallback_s)
    await measure(shared, 200, keys)  # connection, scripts loaded
    results = {}
    try:
        for name, limits in (("local", local), ("redis", shared)):
            admit, settle = await measure(limits, iterations, keys)
            results[name] = {f"{what}_{q}_ms": round(percentile(samples, p) * 1000, 3)
                             for what, samples in (("admit", admit), ("settle", settle))
                             for q, p in (("p50", 0.5), ("p99", 0.99))}
    finally:
        await link.close()
    assert link.healthy and not link.fallbacks, "Redis failed during the run: the numbers are the fallback's"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=100, help="distinct API keys the requests spread over")
    args = parser.parse_args()
    if args.redis_url:
        results = asyncio.run(run(args.redis_url, args.iterations, args.keys))
    else:
        with local_redis() as url:
            results = asyncio.run(run(url, args.iterations, args.keys))
    print(json.dumps({"iterations": args.iterations, "keys": args.keys, **results}, indent=2))


if __name__ == "__main__":
    main()

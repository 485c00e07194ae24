"""API-process CPU per 1,000 streamed tokens of one server: llamaserve, vLLM's server, or the floor
(floor_server.py), one at a time, chat streaming of 64 tokens (ignore_eos) at the given concurrency, as in
docs/BENCHMARKS.md round six.

    .venv/bin/python docs/bench/round6/measure_floor.py {floor,llamaserve,vllm} CONCURRENCY [SECONDS]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from bench import loadgen, run
from engine.tiny_model import ensure_tiny_model

HERE = Path(__file__).resolve().parent


def start(which: str, cache: Path, logs: Path) -> run.Server:
    if which == "floor":
        port = run.free_port()
        argv = [run.PYTHON, str(HERE / "floor_server.py"), str(port), str(cache)]
        return run.Server("floor", argv, {"PYTHONPATH": str(run.ROOT)}, port, logs)
    if which == "vllm":
        return run.vllm_server(Path(ensure_tiny_model(cache)), logs)
    return run.llamaserve_server(cache, logs, [])


async def drive(url: str, data: bytes, concurrency: int, seconds: float) -> list[dict]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await loadgen.closed_loop(session, url, data, "chat", True, concurrency, seconds, 10**6)


def main() -> None:
    which, concurrency = sys.argv[1], int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    cache, logs = run.ROOT / ".cache", Path(os.environ.get("TMPDIR", "/tmp"))
    server = start(which, cache, logs)
    try:
        server.wait_ready("/health")
        plan = {"model": run.MODEL_NAME, "max_tokens": 64, "prompt": "Tell me a story about a llama who"}
        data = loadgen.body(plan, "chat", True)
        url = server.url + "/v1/chat/completions"
        proc = psutil.Process(server.proc.pid)  # the API process alone: the engine's are its children
        asyncio.run(drive(url, data, concurrency, 4))  # warm-up
        before = proc.cpu_times()
        records = asyncio.run(drive(url, data, concurrency, seconds))
        after = proc.cpu_times()
        tokens = sum(r["tokens"] for r in records)
        cpu = (after.user + after.system) - (before.user + before.system)
        print(f"{which} c{concurrency}: {len(records)} requests, {tokens / seconds:.0f} tok/s, "
              f"API CPU {cpu:.2f} s, {1000 * cpu / tokens:.3f} s per 1k tokens", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()

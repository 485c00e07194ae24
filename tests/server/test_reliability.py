"""Graceful drain on SIGTERM, engine death, disconnect storms and a short streaming load, on the real engine.

The figures these tests print (run with -s) are recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import statistics
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, kill_group
from tests.probes import access_lines, alive, engine_in_flight, metric, sse_events, wait_until

PASS = {"extra-parameters": "pass-through"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
GRACE_S = 3
# Tokens a request asks for that no machine generates before the grace (the drain server's context allows it).
ENDLESS = 60_000
LOAD_CLIENTS, LOAD_SECONDS = 64, 4


@pytest.fixture(scope="module")
def doomed_pair(tiny_model):
    """Two servers that these tests end: one drained by SIGTERM, one whose engine is killed (started together)."""
    long_context = ["--max-model-len", str(ENDLESS + 1024), "--rate-limit-rpm", "0", "--rate-limit-tpm", "0"]
    env = {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}  # past the tiny model's 1,024 positions: random weights anyway
    pair = (ServerProcess(["--shutdown-grace-s", str(GRACE_S), *long_context], env=env),
            ServerProcess(long_context, env=env))
    try:
        yield tuple(srv.wait_ready() for srv in pair)
    finally:
        for srv in pair:  # each one, even if stopping the other failed
            kill_group(srv.pgid)
        for srv in pair:
            srv.stop(signal.SIGKILL)


@contextlib.contextmanager
def _ended_with_the_test(srv: ServerProcess):
    """A doomed server's endless requests must not outlive a failed test: they would starve every later test."""
    try:
        yield
    finally:
        kill_group(srv.pgid)


def _stream_in_thread(base_url: str, body: dict, out: dict, key: str,
                      headers: dict[str, str] | None = None) -> threading.Thread:
    """Reads the stream in the chunks it arrives in, not line by line: an endless stream's thousands of lines a
    second, split in Python, would hold the GIL from the test's own thread (seconds per wait on 2 cores)."""
    def run() -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=60, headers={**PASS, **(headers or {})}) as c, \
                    c.stream("POST", "/v1/chat/completions", json=body) as r:
                chunks = r.iter_bytes()
                raw = b""
                for chunk in chunks:
                    raw += chunk
                    if b"\n" in raw:
                        break
                first, _, rest = raw.partition(b"\n")
                out[key + ".first"] = first.decode()
                rest += b"".join(chunks)
                out[key] = (r.status_code, rest.decode() + "\n", time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out[key] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _post_in_thread(base_url: str, body: dict, out: dict, key: str) -> threading.Thread:
    def run() -> None:
        try:
            r = httpx.post(base_url + "/v1/chat/completions", json=body, headers=PASS, timeout=60)
            out[key] = (r.status_code, r.json(), time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out[key] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sigterm_drains_in_flight_requests_then_exits_0(doomed_pair):
    with _ended_with_the_test(doomed_pair[0]):
        _drain_in_flight_requests(doomed_pair[0])


def _drain_in_flight_requests(srv: ServerProcess) -> None:
    descendants = psutil.Process(srv.proc.pid).children(recursive=True)
    out: dict = {}
    endless = {**CHAT, "max_tokens": ENDLESS, "ignore_eos": True}
    # The full response first, seen in the engine while the server is idle: once the endless stream runs, the
    # API process and this one are busy with its thousands of frames a second, and every poll is slow.
    threads = [_post_in_thread(srv.base_url, endless, out, "full")]
    assert wait_until(lambda: engine_in_flight(srv.base_url) == 1, 60), (out, srv.log_tail(4000))
    threads.append(_stream_in_thread(srv.base_url, {**endless, "stream": True}, out, "stream"))
    assert wait_until(lambda: "stream.first" in out, 60)
    threads.append(_stream_in_thread(srv.base_url, {**CHAT, "max_tokens": 8, "ignore_eos": True, "stream": True},
                                     out, "short", headers={"x-request-id": "drain-short"}))
    assert wait_until(lambda: "short.first" in out, 60)
    sent, sent_at = time.monotonic(), time.time()
    srv.proc.send_signal(signal.SIGTERM)
    # Readiness turns false (or the port has closed already) and new requests are refused.
    refused = wait_until(lambda: _refused(srv.base_url), 3, 0.05)
    for t in threads:
        t.join(30)
    rc = srv.proc.wait(60)
    exited = time.monotonic() - sent
    cut_stream, cut_full = out["stream"][2] - sent, out["full"][2] - sent
    print(f"\n[drain] grace {GRACE_S} s: endless stream cut {cut_stream:.2f} s and endless full response "
          f"{cut_full:.2f} s after SIGTERM; exit code {rc} {exited:.2f} s after SIGTERM")
    assert refused
    status, raw, _ = out["short"]
    events, done = sse_events(raw)
    assert status == 200 and done and events[-1]["choices"][0]["finish_reason"] == "length"
    # When the server sent its last byte (its access line), not when this busy process got round to reading it.
    [short] = [line for line in access_lines(srv.log_tail(200_000)) if line["request_id"] == "drain-short"]
    assert short["status"] == 200 and short["ts"] - sent_at < GRACE_S
    status, raw, _ = out["stream"]
    events, done = sse_events(raw)
    assert status == 200 and done and events[-1]["error"]["code"] == "shutting_down", raw[-500:]
    assert GRACE_S - 0.2 < cut_stream < GRACE_S + 1
    status, body, _ = out["full"]
    assert status == 503 and body["error"]["code"] == "shutting_down", body
    assert GRACE_S - 0.2 < cut_full < GRACE_S + 1
    assert rc == 0 and exited < GRACE_S + 2
    assert "Traceback" not in srv.log_tail(200_000)
    # The engine went with it: EngineCore and its worker stopped within the exit's deadline.
    assert not alive(descendants), alive(descendants)


def _refused(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/ready", timeout=2).status_code == 503
    except httpx.TransportError:
        return True


def test_engine_death_fails_requests_fast_and_exits_non_zero(doomed_pair):
    with _ended_with_the_test(doomed_pair[1]):
        _engine_death(doomed_pair[1])


def _engine_death(srv: ServerProcess) -> None:
    out: dict = {}
    endless = {**CHAT, "max_tokens": ENDLESS, "ignore_eos": True}  # still running when the engine dies

    def full() -> None:
        out["full"] = httpx.post(srv.base_url + "/v1/chat/completions", headers=PASS, timeout=60, json=endless)

    waiter = threading.Thread(target=full, daemon=True)
    waiter.start()
    assert wait_until(lambda: engine_in_flight(srv.base_url) == 1, 60)  # first: see the drain test
    stream = _stream_in_thread(srv.base_url, {**endless, "stream": True}, out, "stream")
    assert wait_until(lambda: "stream.first" in out, 60)
    descendants = psutil.Process(srv.proc.pid).children(recursive=True)
    cores = [p for p in descendants if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert cores and len(descendants) > len(cores), [p.name() for p in descendants]  # its worker too
    killed = time.monotonic()
    for p in cores:
        p.kill()
    health = []

    def probe() -> bool:
        try:
            health.append(httpx.get(srv.base_url + "/health", timeout=2).status_code)
        except httpx.TransportError:
            health.append(None)
        return srv.proc.poll() is not None

    assert wait_until(probe, 30, 0.05)
    exited = time.monotonic() - killed
    stream.join(10)
    waiter.join(10)
    print(f"\n[engine death] exit code {srv.proc.returncode} {exited:.1f} s after the kill; /health seen: {sorted(set(map(str, health)))}")
    assert srv.proc.returncode not in (0, None)
    # The killed EngineCore's worker does not outlive it (engine/lifeline.py), nor does anything else.
    assert wait_until(lambda: not alive(descendants), 5), alive(descendants)
    assert 503 in health
    assert out["full"].status_code == 503, out["full"].text
    status, raw, _ = out["stream"]
    events, done = sse_events(raw)
    assert done and events[-1]["error"]["status"] == 503


def test_disconnect_storm_leaves_no_engine_requests(server):
    async def storm() -> int:
        cut = 0
        async with httpx.AsyncClient(base_url=server.base_url, headers=PASS, limits=httpx.Limits(max_connections=100)) as c:

            async def streamer() -> None:
                nonlocal cut
                async with c.stream("POST", "/v1/chat/completions",
                                    json={**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True}) as r:
                    async for _ in r.aiter_lines():
                        break  # leave mid-stream: the connection closes
                cut += 1

            async def impatient() -> None:
                nonlocal cut
                try:
                    await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 400, "ignore_eos": True},
                                 timeout=0.5)
                except httpx.TimeoutException:
                    cut += 1

            await asyncio.gather(*[streamer() for _ in range(24)], *[impatient() for _ in range(24)])
        return cut

    started = time.monotonic()
    cut = asyncio.run(asyncio.wait_for(storm(), 60))
    drained = wait_until(lambda: engine_in_flight(server.base_url) == 0, 10)
    print(f"\n[disconnect storm] {cut} of 48 clients left early; engine idle again "
          f"{time.monotonic() - started:.1f} s after the storm began")
    assert cut >= 40 and drained
    assert metric(httpx.get(server.base_url + "/metrics").text, "llamaserve_requests_in_flight") == 0


_FIRST_CONTENT = re.compile(r'"content":"[^"]')


def test_load_64_streaming_clients(server):
    body = {**CHAT, "max_tokens": 32, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    stats = {"ok": 0, "errors": [], "tokens": 0, "latency": [], "ttft": []}

    async def client(c: httpx.AsyncClient, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    first = None
                    raw = []
                    # Text, not lines: httpx's lines also end at characters such as U+2028 or U+0085, which the
                    # random model generates and JSON leaves unescaped; SSE lines end only at CR and LF.
                    async for text in r.aiter_text():
                        if first is None and _FIRST_CONTENT.search(text):
                            first = time.monotonic() - started
                        raw.append(text)
                    if r.status_code != 200:
                        stats["errors"].append(r.status_code)
                        continue
                events, done = sse_events("".join(raw))
                if not done or "error" in events[-1]:
                    stats["errors"].append("unfinished")
                    continue
                stats["ok"] += 1
                stats["tokens"] += events[-1]["usage"]["completion_tokens"]
                stats["latency"].append(time.monotonic() - started)
                if first is not None:
                    stats["ttft"].append(first)
            except Exception as exc:  # noqa: BLE001 - counted as an error
                stats["errors"].append(repr(exc))

    async def run() -> float:
        async with httpx.AsyncClient(base_url=server.base_url, headers=PASS, timeout=60,
                                     limits=httpx.Limits(max_connections=LOAD_CLIENTS)) as c:
            started = time.monotonic()
            await asyncio.gather(*[client(c, started + LOAD_SECONDS) for _ in range(LOAD_CLIENTS)])
            return time.monotonic() - started

    took = asyncio.run(asyncio.wait_for(run(), LOAD_SECONDS + 90))
    idle = wait_until(lambda: engine_in_flight(server.base_url) == 0, 10)
    lat = sorted(stats["latency"])
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
    print(f"\n[load] {LOAD_CLIENTS} streaming clients, {took:.1f} s: {stats['ok']} streams, "
          f"{len(stats['errors'])} errors, {stats['tokens'] / took:.0f} completion tokens/s, "
          f"latency p50 {p(lat, 0.5):.2f} s p99 {p(lat, 0.99):.2f} s, "
          f"TTFT p50 {statistics.median(stats['ttft'] or [float('nan')]):.2f} s")
    assert stats["errors"] == [] and stats["ok"] >= LOAD_CLIENTS
    assert idle

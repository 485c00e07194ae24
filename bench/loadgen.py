"""The load generator: its own process, loopback only, every loop bounded in requests and time.

`python -m bench.loadgen --plan plan.json --out out.json`

The plan names the servers (name, loopback URL, API server pid), a model, a prompt, the output length and a list
of scenarios; for each scenario and server this process drives the server, reads the server process's own CPU
time (psutil, the API server only: its EngineCore child is counted separately) before and after, and writes one
summary per scenario, server and round.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import psutil

from bench.stats import scenario_key, summarize

REQUEST_TIMEOUT_S = 120  # one request, start to last byte
DRAIN_TIMEOUT_S = 60  # after a scenario's time is up, how long in-flight requests may still take


# Structured output: the same schema on both servers; temperature 0, so both generate the same tokens.
JSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


# Tool calling: one function; tool_choice "required" makes both servers constrain the output to a call of it.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"], "additionalProperties": False}}}


def body(plan: dict[str, Any], api: str, stream: bool, sc: dict[str, Any] | None = None,
         prompt: str | None = None) -> bytes:
    """One request body; the scenario's kind (plain, beam, best_of, json, tools) decides what is asked for."""
    sc = sc or {}
    kind = sc.get("kind", "plain")
    payload: dict[str, Any] = {
        "model": plan["model"],
        "max_tokens": sc.get("max_tokens", plan["max_tokens"]),
        "ignore_eos": True,
        "temperature": 0.8,
        "stream": stream,
    }
    if kind == "beam":  # vLLM's server takes n as the beam width; so does llamaserve without best_of
        payload.update(use_beam_search=True, n=sc["width"], temperature=0.0)
    elif kind == "best_of":  # the same k candidates generated either way; best_of returns only the best
        payload.update({"n": 1, "best_of": sc["k"]} if sc["mode"] == "best_of" else {"n": sc["k"]})
        payload["seed"] = 7
    elif kind == "json":  # the grammar ends the output, so no ignore_eos
        payload.update(temperature=0.0, ignore_eos=False,
                       response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": JSON_SCHEMA}})
    elif kind == "tools":  # the grammar ends the call, so no ignore_eos
        payload.update(temperature=0.0, ignore_eos=False, tools=[WEATHER_TOOL], tool_choice="required")
    text = prompt or plan["prompt"]
    if api == "responses":  # the same generation under the Responses API's names; its stream ends with the usage
        payload["max_output_tokens"] = payload.pop("max_tokens")
        payload["input"] = text
        return orjson.dumps(payload)
    if stream:
        payload["stream_options"] = {"include_usage": True}
    if api == "chat":
        payload["messages"] = [{"role": "user", "content": text}]
    else:
        payload["prompt"] = text
    return orjson.dumps(payload)


def bodies(plan: dict[str, Any], sc: dict[str, Any]) -> list[bytes]:
    """The scenario's request bodies, sent in turn: one per prompt of the plan's `prompts` for scenarios that
    ask for distinct prompts (beam search: no two requests share a search), else the one prompt."""
    prompts = plan.get("prompts") if sc.get("distinct_prompts") else None
    return [body(plan, sc["api"], sc["stream"], sc, p) for p in (prompts or [None])]


RESPONSE_ENDS = ("response.completed", "response.incomplete")


def _has_text(chunk: dict[str, Any], api: str) -> bool:
    if api == "responses":
        return chunk.get("type") == "response.output_text.delta" and bool(chunk.get("delta"))
    for c in chunk.get("choices") or ():
        if api == "chat":
            if (c.get("delta") or {}).get("content"):
                return True
        elif c.get("text"):
            return True
    return False


async def one_request(session: aiohttp.ClientSession, url: str, data: bytes, api: str, stream: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"ok": False, "start": time.perf_counter(), "end": None, "tokens": 0, "ttft": None, "itl": []}
    try:
        async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                rec["error"] = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return rec
            if not stream:
                out = orjson.loads(await resp.read())
                rec["tokens"] = out["usage"]["output_tokens" if api == "responses" else "completion_tokens"]
                rec["ok"] = True
                return rec
            last = None
            done = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data_part = line[6:].strip()
                if data_part == b"[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                chunk = orjson.loads(data_part)
                if "error" in chunk or chunk.get("type") == "response.failed":
                    rec["error"] = str(chunk.get("error") or chunk["response"]["error"])[:200]
                    return rec
                if _has_text(chunk, api):
                    if last is None:
                        rec["ttft"] = now - rec["start"]
                    else:
                        rec["itl"].append(now - last)
                    last = now
                if chunk.get("type") in RESPONSE_ENDS:  # a Responses stream: no [DONE] after its last event
                    rec["tokens"] = chunk["response"]["usage"]["output_tokens"]
                    done = True
                    break
                usage = chunk.get("usage")
                if usage:
                    rec["tokens"] = usage["completion_tokens"]
            rec["ok"] = done and rec["tokens"] > 0
            if not rec["ok"]:
                rec["error"] = "stream ended without [DONE] or usage"
            return rec
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError, KeyError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:200]
        return rec
    finally:
        rec["end"] = time.perf_counter()


async def closed_loop(session, url, data: bytes | list[bytes], api, stream, concurrency: int, duration_s: float,
                      max_requests: int) -> list[dict]:
    """`concurrency` workers, each sending its next request when the previous one ends, until time or count is up.
    With several bodies, request i sends body i (mod their number)."""
    records: list[dict] = []
    deadline = time.perf_counter() + duration_s
    issued = 0
    datas = data if isinstance(data, list) else [data]

    async def worker() -> None:
        nonlocal issued
        while time.perf_counter() < deadline and issued < max_requests:
            mine = datas[issued % len(datas)]
            issued += 1
            records.append(await one_request(session, url, mine, api, stream))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), duration_s + DRAIN_TIMEOUT_S)
    return records


async def open_loop(session, url, data, api, stream, concurrency: int, rate: float, duration_s: float, max_requests: int,
                    seed: int) -> list[dict]:
    """Poisson arrivals at `rate` per second, at most `concurrency` in flight (later arrivals wait for a slot)."""
    rng = random.Random(seed)
    slots = asyncio.Semaphore(concurrency)
    records: list[dict] = []
    tasks = []

    async def send() -> None:
        async with slots:
            records.append(await one_request(session, url, data, api, stream))

    start = time.perf_counter()
    at = 0.0
    for _ in range(max_requests):
        at += rng.expovariate(rate)
        if at >= duration_s:
            break
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send()))
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), DRAIN_TIMEOUT_S)
    return records


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system  # this process's threads only; children are not included


def _engine_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for child in proc.children(recursive=True):
        try:
            total += _cpu(child)
        except psutil.Error:
            pass
    return total


async def _scenario(session, target: dict[str, Any], plan: dict[str, Any], sc: dict[str, Any], seed: int) -> dict[str, Any]:
    api, stream, loop, c = sc["api"], sc["stream"], sc["loop"], sc["concurrency"]
    url = target["url"] + ROUTES[api]
    data = bodies(plan, sc)
    server = target["process"]
    # Scenarios with a fixed request count (beam search, best_of) set their own cap and a generous time limit.
    duration_s = sc.get("duration_s", plan["duration_s"])
    max_requests = sc.get("requests", plan["max_requests"])
    cpu0, eng0, t0 = _cpu(server), _engine_cpu(server), time.perf_counter()
    if loop == "closed":
        records = await closed_loop(session, url, data, api, stream, c, duration_s, max_requests)
    else:
        records = await open_loop(session, url, data[0], api, stream, c, sc["rate"], duration_s, max_requests,
                                  seed=seed)
    t1 = max([r["end"] for r in records] + [t0])
    cpu1, eng1 = _cpu(server), _engine_cpu(server)
    summary = summarize(records, wall_s=t1 - t0, server_cpu_s=cpu1 - cpu0, engine_cpu_s=eng1 - eng0)
    summary["scenario"] = sc
    summary["first_errors"] = [r["error"] for r in records if not r["ok"]][:3]
    return summary


ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}


def warmups(scenarios: list[dict[str, Any]], server: str) -> list[dict[str, Any]]:
    """The scenarios a server is warmed up with before anything is measured: one of each kind, route and mode
    that is not plain (a grammar's first compile; the first request with logprobs, which best_of and beam search
    ask for, compiles vLLM's rank kernel in each engine process: seconds, once)."""
    out, seen = [], set()
    for sc in scenarios:
        kind = (sc.get("kind", "plain"), sc["api"], sc.get("mode"))
        if kind[0] == "plain" or kind in seen or (sc.get("servers") and server not in sc["servers"]):
            continue
        seen.add(kind)
        out.append(sc)
    return out


async def run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Every scenario on every target back to back (the order alternating), `rounds` times over.

    Running the servers' scenarios side by side, rather than one server's whole matrix and then the other's,
    keeps slow drifts of the machine's background load out of the ratios.
    """
    targets = plan["targets"]
    for t in targets:
        if urlsplit(t["url"]).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"loopback only: refusing {t['url']}")
        t["process"] = psutil.Process(t["pid"])
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t["name"]: {} for t in targets}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for t in targets:  # warm-up, not measured: every route and mode at a little concurrency
            for api in plan["apis"]:
                for stream in (True, False):
                    await closed_loop(session, t["url"] + ROUTES[api], body(plan, api, stream), api, stream, 4,
                                      plan["warmup_s"], 64)
            for sc in warmups(plan["scenarios"], t["name"]):
                await closed_loop(session, t["url"] + ROUTES[sc["api"]], bodies(plan, sc), sc["api"], sc["stream"],
                                  2, plan["warmup_s"], 4)
        step = 0
        for rnd in range(plan.get("rounds", 1)):
            for i, sc in enumerate(plan["scenarios"]):
                order = targets if step % 2 == 0 else targets[::-1]
                step += 1
                for t in order:
                    if sc.get("servers") and t["name"] not in sc["servers"]:
                        continue  # e.g. best_of, which vLLM's server ignores
                    await asyncio.sleep(plan.get("settle_s", 0.5))  # the previous scenario's tail leaves the server
                    summary = await _scenario(session, t, plan, sc, seed=1000 + i)
                    results[t["name"]].setdefault(scenario_key(sc), []).append(summary)
                    print(f"  [{rnd + 1}] {t['name']:<10} {scenario_key(sc):<28} {summary['ok']:>5} ok "
                          f"{summary['errors']:>3} err {summary['output_tok_s'] or 0:8.0f} tok/s  "
                          f"TTFT p50 {summary['ttft_p50_ms'] or 0:6.0f} ms  cpu {summary['server_cpu_s']:.2f}s",
                          file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    plan = orjson.loads(open(args.plan, "rb").read())
    coro = run_plan(plan)
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(coro)
    else:
        results = uvloop.run(coro)
    with open(args.out, "wb") as f:
        f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()

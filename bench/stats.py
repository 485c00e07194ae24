"""Statistics for the benchmark: percentiles, per-scenario summaries, the ratio table and the targets.

Pure functions over plain dicts and lists, so they can be unit-tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

# (column key, heading, metric key in a summary, higher is better)
RATIO_COLUMNS: list[tuple[str, str, bool]] = [
    ("output_tok_s", "out tok/s", True),
    ("req_s", "req/s", True),
    ("latency_p50_ms", "lat p50", False),
    ("latency_p99_ms", "lat p99", False),
    ("ttft_p50_ms", "TTFT p50", False),
    ("ttft_p99_ms", "TTFT p99", False),
    ("itl_p50_ms", "ITL p50", False),
    ("itl_p99_ms", "ITL p99", False),
    ("cpu_s_per_1k_tok", "CPU s/1k tok", False),
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(ordered[lo])
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return percentile(present, 50)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs; None when either is missing or theirs is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


STALL_S = 0.2  # a gap between a stream's tokens longer than this is a stall


def summarize(records: list[dict[str, Any]], *, wall_s: float, server_cpu_s: float, engine_cpu_s: float | None = None) -> dict[str, Any]:
    """One scenario's figures from its request records.

    A record: ok (bool), start, end (seconds), tokens (output tokens), ttft (s, streaming only), itl (list of s:
    gaps between successive chunks that carried text, streaming only). `stalls`: gaps over STALL_S.
    """
    ok = [r for r in records if r.get("ok")]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r.get("ttft") is not None]
    itls = [gap for r in ok for gap in (r.get("itl") or ())]
    latencies = [r["end"] - r["start"] for r in ok]
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "output_tokens": tokens,
        "wall_s": wall_s,
        "output_tok_s": tokens / wall_s if wall_s > 0 else None,
        "req_s": len(ok) / wall_s if wall_s > 0 else None,
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "itl_p50_ms": _ms(percentile(itls, 50)),
        "itl_p99_ms": _ms(percentile(itls, 99)),
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "stalls": sum(gap > STALL_S for gap in itls),
        "max_gap_ms": _ms(max(itls)) if itls else None,
        "server_cpu_s": server_cpu_s,
        "engine_cpu_s": engine_cpu_s,
        "cpu_s_per_1k_tok": server_cpu_s / tokens * 1000 if tokens else None,
    }


def scenario_key(s: dict[str, Any]) -> str:
    """e.g. `chat stream closed c32`, `beam w4 c1`, `best_of=4 n=1 c4`, `json_schema chat c4`, `tool_call chat c8`."""
    kind = s.get("kind", "plain")
    if kind == "beam":
        return f"beam w{s['width']} c{s['concurrency']}"
    if kind == "best_of":
        head = f"best_of={s['k']} n=1" if s["mode"] == "best_of" else f"n={s['k']}"
        return f"{head} c{s['concurrency']}"
    if kind == "json":
        return f"json_schema {s['api']} c{s['concurrency']}"
    if kind == "tools":
        return f"tool_call {s['api']} c{s['concurrency']}"
    if kind == "responses":
        return f"responses stream closed c{s['concurrency']}"
    return f"{s['api']} {'stream' if s['stream'] else 'full'} {s['loop']} c{s['concurrency']}"


def ratio_table(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scenario present in both: {scenario, <metric>: ours/theirs or None}."""
    rows = []
    for key in ours:
        if key not in theirs:
            continue
        row: dict[str, Any] = {"scenario": key}
        for metric, _, _ in RATIO_COLUMNS:
            row[metric] = ratio(ours[key].get(metric), theirs[key].get(metric))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], ours: dict[str, dict[str, Any]] | None = None) -> str:
    """The ratio table as fixed-width text; with `ours`, llamaserve's absolute tokens/s in a last column."""
    headings = ["scenario"] + [h for _, h, _ in RATIO_COLUMNS] + (["ls tok/s"] if ours else [])
    lines = []
    width = max([len(r["scenario"]) for r in rows] + [len("scenario")])
    lines.append(f"{headings[0]:<{width}}  " + "  ".join(f"{h:>12}" for h in headings[1:]))
    for r in rows:
        cells = [_cell(r[m]) for m, _, _ in RATIO_COLUMNS]
        if ours:
            v = ours[r["scenario"]].get("output_tok_s")
            cells.append("-" if v is None else f"{v:.0f}")
        lines.append(f"{r['scenario']:<{width}}  " + "  ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def cpu_per_1k(summaries: Iterable[dict[str, Any]]) -> float | None:
    """Server CPU seconds per 1,000 output tokens over several scenarios (total CPU / total tokens)."""
    cpu = tokens = 0.0
    for s in summaries:
        cpu += s["server_cpu_s"]
        tokens += s["output_tokens"]
    return cpu / tokens * 1000 if tokens else None


CEILING_SHARE = 0.95  # throughput at c32 at least this share of the printed ceiling
FRONT_END_CPU = 0.5  # server CPU per 1k streamed tokens at c8-c128, llamaserve / vLLM
TAIL_CONCURRENCY = (32, 128)  # where streaming p99 latency and stalls are compared


def targets(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]], apis: Sequence[str]) -> list[dict[str, Any]]:
    """The performance targets for the plain scenarios, each {name, value, limit, met} (and `shown` where the value is
    not a ratio): closed-loop scenarios; a scenario missing from the run gives no target."""

    def r(metric: str, stream: bool, c: int) -> float | None:
        vals = []
        for api in apis:
            key = scenario_key({"api": api, "stream": stream, "loop": "closed", "concurrency": c})
            if key in ours and key in theirs:
                vals.append(ratio(ours[key].get(metric), theirs[key].get(metric)))
        # The worse of chat and completions: a target holds only if it holds on both routes.
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return min(vals) if metric in ("output_tok_s", "req_s") else max(vals)

    def streamed(side: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for k, s in side.items() if " stream closed " in k and int(k.rsplit(" c", 1)[1]) >= 8]

    def check(name: str, value: float | None, limit: float, higher: bool) -> dict[str, Any]:
        met = None if value is None else (value >= limit if higher else value <= limit)
        return {"name": name, "value": value, "limit": limit, "met": met}

    out = []
    for stream in (True, False):
        mode = "streaming" if stream else "non-streaming"
        ceiling = throughput_ceiling(theirs, apis, stream)
        share = ratio(r("output_tok_s", stream, 32), ceiling)
        out.append(check(f"{mode} output tok/s at c32 >= {CEILING_SHARE:g} of the ceiling", share, CEILING_SHARE, True))
    out.append(check("TTFT p50 at c1 <= 1.0x", r("ttft_p50_ms", True, 1), 1.0, False))
    out.append(check("TTFT p50 at c32 <= 1.0x", r("ttft_p50_ms", True, 32), 1.0, False))
    out.append(check(f"server CPU per 1k streamed tokens (c8-c128) <= {FRONT_END_CPU:g}x",
                     ratio(cpu_per_1k(streamed(ours)), cpu_per_1k(streamed(theirs))), FRONT_END_CPU, False))
    for c in TAIL_CONCURRENCY:
        p99 = r("latency_p99_ms", True, c)
        if p99 is not None:
            out.append(check(f"streaming latency p99 at c{c} <= 1.0x", p99, 1.0, False))
        keys = [scenario_key({"api": api, "stream": True, "loop": "closed", "concurrency": c}) for api in apis]
        keys = [k for k in keys if k in ours and k in theirs]
        if keys:
            mine, vllms = (sum(side[k]["stalls"] for k in keys) for side in (ours, theirs))
            out.append({"name": f"streaming stalls > {STALL_S * 1000:.0f} ms at c{c}: no more than vLLM's",
                        "value": None, "limit": None, "met": mine <= vllms, "shown": f"{mine:g} vs {vllms:g}"})
    return out


BEAM_TARGET = 2.0  # llamaserve's beam-search requests/s over vLLM's server's, at every width and concurrency
BEST_OF_TARGET = 1.15  # best_of=k, n=1 may cost at most this much more than n=k


def beam_targets(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Beam search: requests/s llamaserve / vLLM per width and concurrency, each at least BEAM_TARGET."""
    out = []
    for key in ours:
        if key.startswith("beam ") and key in theirs:
            value = ratio(ours[key].get("req_s"), theirs[key].get("req_s"))
            out.append({"name": f"{key}: beam search req/s >= {BEAM_TARGET:g}x vLLM", "value": value,
                        "limit": BEAM_TARGET, "met": None if value is None else value >= BEAM_TARGET})
    return out


RESPONSES_TARGET = 1.1  # the Responses stream's per-token cost within 10% of chat's


def best_of_targets(ours: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """best_of=k, n=1 against n=k on llamaserve: wall time per request (n=k req/s over best_of req/s), when both
    generated the same tokens per request."""
    out = []
    for key, s in ours.items():
        if not key.startswith("best_of="):
            continue
        k, rest = key[len("best_of="):].split(" n=1 ")
        plain = ours.get(f"n={k} {rest}")
        if not plain:
            continue
        cost = ratio(plain.get("req_s"), s.get("req_s"))
        same = _tokens_per_request(s) == _tokens_per_request(plain)
        out.append({"name": f"best_of={k} n=1 costs <= {BEST_OF_TARGET:g}x n={k} ({rest}, "
                            f"{'same' if same else 'DIFFERENT'} tokens per request)",
                    "value": cost, "limit": BEST_OF_TARGET,
                    "met": None if cost is None or not same else cost <= BEST_OF_TARGET})
    return out


def responses_targets(ours: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The Responses stream against the chat stream on llamaserve, at the same concurrency: the API server's CPU
    per token (its own process; the engine's work is the same), at most RESPONSES_TARGET times chat's."""
    out = []
    for key, s in ours.items():
        if not key.startswith("responses stream "):
            continue
        chat = ours.get("chat" + key[len("responses"):])
        if not chat:
            continue
        cost = ratio(s.get("cpu_s_per_1k_tok"), chat.get("cpu_s_per_1k_tok"))
        out.append({"name": f"{key}: API server CPU per token <= {RESPONSES_TARGET:g}x chat's", "value": cost,
                    "limit": RESPONSES_TARGET, "met": None if cost is None else cost <= RESPONSES_TARGET})
    return out


def ready_target(ready_s: dict[str, float]) -> list[dict[str, Any]]:
    """Time from process start to ready, llamaserve / vLLM: at most 1x."""
    value = ratio(ready_s.get("llamaserve"), ready_s.get("vllm"))
    return [{"name": "time from process start to ready <= 1.0x vLLM", "value": value, "limit": 1.0,
             "met": None if value is None else value <= 1.0}]


def _tokens_per_request(s: dict[str, Any]) -> float | None:
    return s["output_tokens"] / s["ok"] if s.get("ok") else None


def throughput_ceiling(theirs: dict[str, dict[str, Any]], apis: Sequence[str], stream: bool, c: int = 32) -> float | None:
    """The most a server could gain in output tokens/s on a machine whose cores are all busy: what vLLM's engine
    would make if it also had the CPU vLLM's API server used, at the tokens per engine-CPU second it showed.
    (server + engine CPU) / engine CPU, the lower of the routes; None without CPU figures."""
    vals = []
    for api in apis:
        s = theirs.get(scenario_key({"api": api, "stream": stream, "loop": "closed", "concurrency": c}))
        if s and s.get("engine_cpu_s") and s.get("server_cpu_s") is not None:
            vals.append((s["server_cpu_s"] + s["engine_cpu_s"]) / s["engine_cpu_s"])
    return min(vals) if vals else None


def format_ceilings(theirs: dict[str, dict[str, Any]], apis: Sequence[str]) -> str:
    lines = []
    for stream in (True, False):
        ceiling = throughput_ceiling(theirs, apis, stream)
        if ceiling is not None:
            mode = "streaming" if stream else "non-streaming"
            lines.append(f"ceiling: at c32 {mode}, a server using no CPU at all could reach about {ceiling:.2f}x "
                         "(vLLM's (server + engine CPU) / engine CPU; meaningful when every core is busy)")
    return "\n".join(lines)


def format_targets(results: list[dict[str, Any]]) -> str:
    lines = []
    for t in results:
        mark = "n/a " if t["met"] is None else ("MET " if t["met"] else "MISS")
        value = t.get("shown") or ("-" if t["value"] is None else f"{t['value']:.2f}x")
        lines.append(f"[{mark}] {t['name']}: {value}")
    return "\n".join(lines)


def merge_rounds(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's summary over repeated rounds: the median of each figure (rounds: how many)."""
    if len(summaries) == 1:
        return {**summaries[0], "rounds": 1}
    merged: dict[str, Any] = {"rounds": len(summaries), "scenario": summaries[0].get("scenario")}
    for key, value in summaries[0].items():
        if key in merged:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
            merged[key] = median(s.get(key) for s in summaries)
        else:
            merged[key] = value
    merged["first_errors"] = [e for s in summaries for e in s.get("first_errors") or ()][:3]
    return merged

"""What tracing costs: llamaserve with tracing off against llamaserve recording every request (sampling 1.0) into
an OTLP/HTTP receiver in this process, same model, same load, scenarios alternating.

    .venv/bin/python -m bench.run --tracing [--duration 5] [--rounds 3]

Reports, per scenario, the API process's CPU per request and per 1,000 output tokens on each side, and what the
traced side spends beyond the untraced one (the spans: the request's, its children, vLLM's llm_request, and their
export). Off, no middleware is installed and each step's `tracing.span()` is a module-global check: `off_cost_ns`
measures what that check costs, against the code without tracing at all.
"""

from __future__ import annotations

import threading
import timeit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SERVERS = ("untraced", "traced")
# Streamed chat (per-token work) and full chat (per-request work), alone and under concurrency.
SCENARIOS = [
    {"api": "chat", "stream": True, "loop": "closed", "concurrency": 1},
    {"api": "chat", "stream": True, "loop": "closed", "concurrency": 8},
    {"api": "chat", "stream": False, "loop": "closed", "concurrency": 1},
    {"api": "chat", "stream": False, "loop": "closed", "concurrency": 8},
]


class SpanSink:
    """An OTLP/HTTP receiver that takes every export and counts its bytes (decoding is the collector's cost)."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                sink.bytes += len(self.rfile.read(int(self.headers.get("content-length", 0))))
                sink.exports += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}/v1/traces"
        threading.Thread(target=self._server.serve_forever, name="span-sink", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def server_flags(name: str, sink: SpanSink) -> list[str]:
    if name == "untraced":
        return []
    return ["--otlp-traces-endpoint", sink.endpoint, "--otlp-traces-protocol", "http/protobuf",
            "--trace-sample-ratio", "1"]


def off_cost_ns() -> float:
    """Nanoseconds one `with tracing.span(...)` costs with tracing off (the per-step check a request pays)."""
    from server.observe import tracing

    assert tracing.tracer() is None
    loops = 200_000

    def step() -> None:
        with tracing.span("admission"):
            pass

    return min(timeit.repeat(step, number=loops, repeat=5)) / loops * 1e9


def compare(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per scenario: CPU ms per request and CPU s per 1k tokens on each side, and the traced side's extra."""
    rows = []
    for key, off in results["untraced"].items():
        on = results["traced"].get(key)
        if on is None or not off.get("ok") or not on.get("ok"):
            continue
        row: dict[str, Any] = {"scenario": key}
        for side, s in (("off", off), ("on", on)):
            row[f"cpu_ms_per_req_{side}"] = s["server_cpu_s"] / s["ok"] * 1000
            row[f"cpu_s_per_1k_tok_{side}"] = s["cpu_s_per_1k_tok"]
            row[f"latency_p50_ms_{side}"] = s["latency_p50_ms"]
            row[f"tok_s_{side}"] = s["output_tok_s"]
        row["extra_cpu_ms_per_req"] = row["cpu_ms_per_req_on"] - row["cpu_ms_per_req_off"]
        tokens_per_req = on["output_tokens"] / on["ok"]
        row["extra_cpu_us_per_token"] = row["extra_cpu_ms_per_req"] * 1000 / tokens_per_req if tokens_per_req else None
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (f"{'scenario':<24} {'CPU ms/req off':>14} {'on':>8} {'extra':>8} {'extra us/tok':>12} "
            f"{'lat p50 off':>11} {'on':>8} {'tok/s off':>9} {'on':>8}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['scenario']:<24} {r['cpu_ms_per_req_off']:>14.2f} {r['cpu_ms_per_req_on']:>8.2f} "
            f"{r['extra_cpu_ms_per_req']:>8.2f} {r['extra_cpu_us_per_token'] or 0:>12.1f} "
            f"{r['latency_p50_ms_off'] or 0:>11.1f} {r['latency_p50_ms_on'] or 0:>8.1f} "
            f"{r['tok_s_off'] or 0:>9.0f} {r['tok_s_on'] or 0:>8.0f}")
    return "\n".join(lines)


def run(args: Any, start_server: Any, drive: Any, plan: dict[str, Any], work: Path) -> dict[str, Any]:
    """Starts both servers (one at a time), drives the plan's SCENARIOS on both, and returns the report."""
    from bench import stats

    sink = SpanSink()
    servers = []
    try:
        for name in SERVERS:
            srv = start_server(name, server_flags(name, sink))
            servers.append(srv)
            srv.wait_ready("/ready")
        raw = drive(servers, {**plan, "scenarios": SCENARIOS}, work)
    finally:
        for srv in servers:
            srv.stop()
        sink.close()
    results = {name: {key: stats.merge_rounds(runs) for key, runs in scen.items()} for name, scen in raw.items()}
    rows = compare(results)
    return {"tracing": rows, "off_cost_ns_per_step": off_cost_ns(), "exports": sink.exports,
            "exported_bytes": sink.bytes, "results": results, "raw": raw}

"""The tracing bench's arithmetic and its servers' flags (no server)."""

from __future__ import annotations

import httpx

from bench import tracing


def summary(ok: int, cpu_s: float, tokens: int) -> dict:
    return {"ok": ok, "server_cpu_s": cpu_s, "output_tokens": tokens, "cpu_s_per_1k_tok": cpu_s / tokens * 1000,
            "latency_p50_ms": 10.0, "output_tok_s": 100.0}


def test_the_traced_sides_extra_cpu_per_request_and_per_token():
    results = {"untraced": {"chat full closed c1": summary(10, 0.20, 640)},
               "traced": {"chat full closed c1": summary(20, 0.50, 1280), "only traced": summary(1, 1, 1)}}
    [row] = tracing.compare(results)
    assert row["scenario"] == "chat full closed c1"
    assert round(row["cpu_ms_per_req_off"], 6) == 20 and round(row["cpu_ms_per_req_on"], 6) == 25
    assert round(row["extra_cpu_ms_per_req"], 6) == 5
    assert round(row["extra_cpu_us_per_token"], 6) == round(5000 / 64, 6)  # 64 tokens per request
    assert "chat full closed c1" in tracing.format_rows([row])


def test_only_the_traced_server_exports_and_the_sink_takes_exports():
    sink = tracing.SpanSink()
    try:
        assert tracing.server_flags("untraced", sink) == []
        flags = tracing.server_flags("traced", sink)
        assert flags[flags.index("--otlp-traces-endpoint") + 1] == sink.endpoint
        assert flags[flags.index("--trace-sample-ratio") + 1] == "1"
        assert httpx.post(sink.endpoint, content=b"\x0a\x00").status_code == 200
        assert (sink.exports, sink.bytes) == (1, 2)
    finally:
        sink.close()


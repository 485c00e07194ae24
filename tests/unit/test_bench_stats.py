"""The benchmark's statistics helpers (bench.stats): no server, no timing."""

from __future__ import annotations

import pytest

from bench import stats


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile(values, 50) == pytest.approx(2.5)
    assert stats.percentile(values, 99) == pytest.approx(3.97)
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([], 50) is None
    with pytest.raises(ValueError):
        stats.percentile(values, 101)


def test_median_skips_missing() -> None:
    assert stats.median([3.0, None, 1.0, 2.0]) == 2.0
    assert stats.median([None]) is None


def test_ratio() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(1.0, 0) is None


def _records() -> list[dict]:
    return [
        {"ok": True, "start": 0.0, "end": 1.0, "tokens": 10, "ttft": 0.1, "itl": [0.01, 0.03]},
        {"ok": True, "start": 0.5, "end": 2.0, "tokens": 10, "ttft": 0.3, "itl": [0.02]},
        {"ok": False, "start": 1.0, "end": 1.1, "tokens": 0, "ttft": None, "itl": [], "error": "HTTP 500"},
    ]


def test_summarize() -> None:
    s = stats.summarize(_records(), wall_s=2.0, server_cpu_s=0.05, engine_cpu_s=1.0)
    assert (s["requests"], s["ok"], s["errors"], s["output_tokens"]) == (3, 2, 1, 20)
    assert s["output_tok_s"] == 10.0
    assert s["req_s"] == 1.0
    assert s["ttft_p50_ms"] == pytest.approx(200.0)
    assert s["itl_p50_ms"] == pytest.approx(20.0)
    assert s["latency_p50_ms"] == pytest.approx(1250.0)
    assert s["cpu_s_per_1k_tok"] == pytest.approx(2.5)


def test_summarize_without_successes() -> None:
    s = stats.summarize(_records()[2:], wall_s=0.0, server_cpu_s=0.0)
    assert s["output_tok_s"] is None and s["ttft_p50_ms"] is None and s["cpu_s_per_1k_tok"] is None


def _side(tok_s: float, ttft: float, cpu: float, tokens: int = 1000, p99: float = 100.0, stalls: int = 0) -> dict:
    keys = [
        stats.scenario_key({"api": api, "stream": stream, "loop": "closed", "concurrency": c})
        for api in ("chat", "completions") for stream in (True, False) for c in ((1, 32, 128) if stream else (1, 32))
    ]
    return {
        k: {"output_tok_s": tok_s, "req_s": tok_s / 10, "ttft_p50_ms": ttft if " stream " in k else None,
            "ttft_p99_ms": None, "itl_p50_ms": None, "itl_p99_ms": None, "cpu_s_per_1k_tok": cpu,
            "latency_p50_ms": p99 / 2, "latency_p99_ms": p99, "stalls": stalls if " stream " in k else 0,
            "server_cpu_s": cpu * tokens / 1000, "engine_cpu_s": 9.0, "output_tokens": tokens}
        for k in keys
    }


def test_ratio_table_and_format() -> None:
    ours, theirs = _side(150.0, 10.0, 0.5), _side(100.0, 20.0, 1.0)
    rows = stats.ratio_table(ours, theirs)
    assert len(rows) == 10
    row = rows[0]
    assert row["scenario"] == "chat stream closed c1"
    assert row["output_tok_s"] == 1.5 and row["ttft_p50_ms"] == 0.5 and row["itl_p50_ms"] is None
    text = stats.format_table(rows, ours)
    assert "1.50x" in text and "chat stream closed c1" in text and "150" in text


def test_summarize_counts_stalls() -> None:
    records = [{"ok": True, "start": 0.0, "end": 1.0, "tokens": 4, "ttft": 0.1, "itl": [0.01, 0.25, 0.2, 0.5]}]
    s = stats.summarize(records, wall_s=1.0, server_cpu_s=0.1)
    assert s["stalls"] == 2 and s["max_gap_ms"] == pytest.approx(500.0)


def test_targets() -> None:
    # vLLM's server: 1 s of its 10 s of CPU in the API process, so the ceiling is 10/9 = 1.11x.
    ours, theirs = _side(106.0, 10.0, 0.4), _side(100.0, 20.0, 1.0, p99=110.0, stalls=1)
    met = {t["name"]: t for t in stats.targets(ours, theirs, ["chat", "completions"])}
    assert all(t["met"] for t in met.values()), met
    assert met["streaming output tok/s at c32 >= 0.95 of the ceiling"]["value"] == pytest.approx(1.06 / (10 / 9))
    assert met["server CPU per 1k streamed tokens (c8-c128) <= 0.5x"]["value"] == pytest.approx(0.4)
    assert met["streaming latency p99 at c128 <= 1.0x"]["value"] == pytest.approx(100 / 110)
    assert met["streaming stalls > 200 ms at c32: no more than vLLM's"]["shown"] == "0 vs 2"
    missed = stats.targets(_side(100.0, 30.0, 0.6, p99=120.0, stalls=1), _side(100.0, 20.0, 1.0), ["chat"])
    assert [t["met"] for t in missed] == [False] * len(missed) and len(missed) == 9
    text = stats.format_targets(missed)
    assert "[MISS]" in text and "1 vs 0" in text


def test_targets_take_the_worse_route() -> None:
    ours, theirs = _side(106.0, 10.0, 0.5), _side(100.0, 20.0, 1.0)
    ours["completions stream closed c32"]["output_tok_s"] = 100.0
    t = stats.targets(ours, theirs, ["chat", "completions"])[0]
    assert t["value"] == pytest.approx(1.0 / (10 / 9)) and t["met"] is False


def test_merge_rounds_takes_medians() -> None:
    runs = [{"output_tok_s": v, "ttft_p50_ms": None, "scenario": {"api": "chat"}, "first_errors": []} for v in (3.0, 1.0, 2.0)]
    merged = stats.merge_rounds(runs)
    assert merged["rounds"] == 3 and merged["output_tok_s"] == 2.0 and merged["ttft_p50_ms"] is None
    assert stats.merge_rounds(runs[:1])["rounds"] == 1


def test_throughput_ceiling_is_the_cpu_a_server_could_hand_back() -> None:
    theirs = _side(100.0, 20.0, 1.0)
    for s in theirs.values():
        s["server_cpu_s"], s["engine_cpu_s"] = 1.0, 4.0
    theirs["completions stream closed c32"]["server_cpu_s"] = 0.5
    assert stats.throughput_ceiling(theirs, ["chat"], True) == pytest.approx(1.25)
    assert stats.throughput_ceiling(theirs, ["chat", "completions"], True) == pytest.approx(1.125)  # the lower route
    assert "1.25x" in stats.format_ceilings(theirs, ["chat"])
    theirs["chat full closed c32"]["engine_cpu_s"] = None
    assert stats.throughput_ceiling(theirs, ["chat"], False) is None

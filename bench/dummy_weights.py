"""The side-by-side bench (bench.run) on a model directory with vLLM's dummy weights: a real architecture's cost per
token, nothing to download. scripts/gpu-check runs it on a GPU host beside vLLM's own server:

    .venv/bin/python -m bench.dummy_weights MODEL_DIR [--duration 3]

Both servers get the same engine arguments and nothing CPU-specific (CUDA graphs on, vLLM's defaults for the GPU);
the plan is bench.run's quick plain scenarios on the chat API: closed loop at 1 and 32 clients, streaming also 128.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import stats
from bench.run import PROMPT, PROMPTS, PYTHON, Server, drive, free_port, scenarios, stop_servers_on_sigterm

SERVED_NAME = "llamaserve-gpu-check"
MAX_MODEL_LEN = 4096
DUMMY = {"load_format": "dummy"}


def llamaserve_argv(model_dir: Path, port: int) -> list[str]:
    return [PYTHON, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--model", str(model_dir), "--served-model-name", SERVED_NAME, "--max-model-len", str(MAX_MODEL_LEN),
            "--engine-args", json.dumps(DUMMY), "--rate-limit-rpm", "0", "--rate-limit-tpm", "0",
            "--allow-unauthenticated"]


def vllm_argv(model_dir: Path, port: int) -> list[str]:
    # What llamaserve sets beside the flags above (engine/engine_config.py OWNED_ARGS): the same engine.
    return [PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
            "--model", str(model_dir), "--served-model-name", SERVED_NAME, "--max-model-len", str(MAX_MODEL_LEN),
            "--load-format", DUMMY["load_format"], "--seed", "0", "--max-logprobs", "32", "--generation-config", "vllm"]


def plan(duration_s: float) -> dict[str, Any]:
    return {
        "model": SERVED_NAME, "prompt": PROMPT, "prompts": PROMPTS, "max_tokens": 64, "apis": ["chat"],
        "duration_s": duration_s, "warmup_s": 2.0, "settle_s": 0.5, "max_requests": 2000, "rounds": 1,
        "scenarios": scenarios(True, ["chat"], ("plain",)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a model directory (engine/llama_shapes.py writes one)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per scenario")
    args = parser.parse_args(argv)
    stop_servers_on_sigterm()
    started = time.monotonic()
    ready: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="llamaserve-gpu-bench-") as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        try:
            # One at a time, so that each start-up is its own (vLLM's compile cache, filled by the first, is not).
            for name, make_argv in (("llamaserve", llamaserve_argv), ("vllm", vllm_argv)):
                port = free_port()
                srv = Server(name, make_argv(args.model_dir, port), {}, port, work)
                servers.append(srv)
                ready[name] = round(srv.wait_ready("/ready" if name == "llamaserve" else "/health"), 1)
                print(f"== {name} ready in {ready[name]}s", file=sys.stderr, flush=True)
            raw = drive(servers, plan(args.duration), work)
        finally:
            for srv in servers:
                srv.stop()
    results = {name: {key: stats.merge_rounds(runs) for key, runs in scen.items()} for name, scen in raw.items()}
    rows = stats.ratio_table(results["llamaserve"], results["vllm"])
    print(f"\n{args.model_dir.name}, dummy weights: llamaserve / vLLM (same engine, same load; >1x is better for "
          "tok/s and req/s, <1x for the rest)")
    print(stats.format_table(rows, results["llamaserve"]))
    print(f"ready after: {', '.join(f'{k} {v:.1f}s' for k, v in ready.items())}; "
          f"elapsed {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

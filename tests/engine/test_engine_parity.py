"""The engine llamaserve configures is the one `vllm serve` configures for the same flags and model, field by field
of vLLM's whole configuration (VllmConfig): the tiny model (with vLLM's defaults, and with every named engine
setting given), and every preset in configs/presets on a local directory of its architecture (engine/llama_shapes.py,
weights not loaded: load_format dummy).

vLLM derives its batch sizes and more from the platform: each case is built on this host's CPU platform and on
vLLM's CUDA platform reporting an H100 80GB and an A100 80GB (tests/engine/engine_parity_probe.py says what is faked),
in a process of its own per platform. No engine starts and no weights are read, so no lock is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.llama_shapes import write_model_dir

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p for p in (ROOT / "configs" / "presets").glob("*.yaml") if p.name != "hardware.yaml")
PRESET_SHAPES = {
    "llama-3.2-1b-instruct": "llama-3.2-1b", "llama-3.2-3b-instruct": "llama-3.2-3b",
    "llama-3.1-8b-instruct": "llama-3.1-8b", "llama-3.1-70b-instruct": "llama-3.1-70b",
    "llama-3.3-70b-instruct": "llama-3.1-70b", "llama-3.1-405b-instruct-fp8": "llama-3.1-405b",
    "llama-guard-3-1b": "llama-3.2-1b", "llama-guard-3-8b": "llama-3.1-8b",
}
# Arguments llamaserve always sets (engine/engine_config.py OWNED_ARGS): the API contract's sampling defaults, and
# room for beam search's 2 x width alternatives (2 x max_best_of 16). A `vllm serve` user asking for the same
# engine passes them too.
LLAMASERVE_FLAGS = ["--generation-config", "vllm", "--max-logprobs", "32"]
# A value other than vLLM's default for every named engine setting.
TUNED = {
    "max_num_seqs": 48, "max_num_batched_tokens": 3072, "enable_chunked_prefill": True,
    "enable_prefix_caching": False, "long_prefill_token_threshold": 256, "kv_cache_dtype": "fp8",
    "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8]},
    "speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
    "engine_args": {"block_size": 32, "load_format": "dummy"},
}
# Differs between any two configurations, however built.
PER_INSTANCE = {"instance_id"}
GPUS = ("cpu", "h100", "a100")


def serve_argv(settings: dict[str, Any]) -> list[str]:
    """The `vllm serve` flags for the same settings: each has vLLM's name; engine_args are vLLM flags as well."""
    argv: list[str] = []
    for name, value in [*((k, v) for k, v in settings.items() if k != "engine_args"),
                        *settings.get("engine_args", {}).items()]:
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return argv + LLAMASERVE_FLAGS


@pytest.fixture(scope="module")
def cases(tiny_model: Path, tmp_path_factory) -> dict[str, dict[str, Any]]:
    models = tmp_path_factory.mktemp("shapes")
    found = {
        "tiny": {"model": str(tiny_model), "served_model_name": "tiny"},
        "tiny-tuned": {"model": str(tiny_model), "served_model_name": "tiny", **TUNED},
    }
    for preset in PRESETS:
        settings = yaml.safe_load(preset.read_text())
        shape = PRESET_SHAPES[preset.stem]
        settings["model"] = str(write_model_dir(shape, models / shape, tiny_model))
        settings["engine_args"] = {**settings.get("engine_args", {}), "load_format": "dummy"}
        found[preset.stem] = settings
    return {name: {"settings": s, "argv": serve_argv(s)} for name, s in found.items()}


@pytest.fixture(scope="module")
def built(cases, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Per platform, per case: both configurations, flattened to {dotted path: value}."""
    work = tmp_path_factory.mktemp("parity")
    (work / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMASERVE_")}
    results = {}
    for gpu in GPUS:
        out = work / f"{gpu}.json"
        run = subprocess.run(
            [sys.executable, "-m", "tests.engine.engine_parity_probe", gpu, str(work / "cases.json"), str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, f"the {gpu} probe failed:\n{run.stderr[-4000:]}"
        results[gpu] = json.loads(out.read_text())
    return results


def _differences(built: dict[str, Any], gpu: str, case: str) -> list[str]:
    ours, theirs = built[gpu][case]["llamaserve"], built[gpu][case]["vllm_serve"]
    return [
        f"{path}: llamaserve {ours.get(path, '<absent>')} vs vllm serve {theirs.get(path, '<absent>')}"
        for path in sorted(set(ours) | set(theirs) - PER_INSTANCE)
        if path not in PER_INSTANCE and ours.get(path) != theirs.get(path)
    ]


@pytest.mark.parametrize("gpu", GPUS)
def test_every_case_configures_the_engine_as_vllm_serve(built, gpu):
    assert set(built[gpu]) == {"tiny", "tiny-tuned", *(p.stem for p in PRESETS)}
    found = {case: _differences(built, gpu, case) for case in built[gpu]}
    assert not any(found.values()), json.dumps({k: v for k, v in found.items() if v}, indent=1)


@pytest.mark.parametrize(("gpu", "max_num_seqs", "max_num_batched_tokens"), [
    ("cpu", "128", "2048"),  # vLLM's CPU defaults for its API server
    ("h100", "1024", "8192"),  # >= 70 GiB and not an A100
    ("a100", "256", "2048"),  # vLLM keeps A100s at the smaller batch (large batches cost them throughput)
])
def test_the_platforms_batch_defaults_reach_llamaserve(built, gpu, max_num_seqs, max_num_batched_tokens):
    """The fake GPUs are what vLLM's defaults read: without them the comparison would prove nothing."""
    config = built[gpu]["tiny"]["llamaserve"]
    assert config["scheduler_config.max_num_seqs"] == max_num_seqs
    assert config["scheduler_config.max_num_batched_tokens"] == max_num_batched_tokens


def test_named_settings_reach_the_configuration(built):
    config = built["h100"]["tiny-tuned"]["llamaserve"]
    assert config["scheduler_config.max_num_seqs"] == "48"
    assert config["scheduler_config.max_num_batched_tokens"] == "3072"
    assert config["scheduler_config.long_prefill_token_threshold"] == "256"
    assert config["cache_config.enable_prefix_caching"] == "False"
    assert config["cache_config.cache_dtype"] == "'fp8'"
    assert config["cache_config.block_size"] == "32"
    assert config["speculative_config.num_speculative_tokens"] == "3"
    assert config["compilation_config.cudagraph_capture_sizes[3]"] == "8"

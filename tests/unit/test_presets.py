"""Model presets in configs/presets: each loads as a settings file and matches what hardware.yaml claims."""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from server.settings import ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "configs" / "presets"
HARDWARE = yaml.safe_load((PRESETS / "hardware.yaml").read_text())

# The models the API contract names (shared/spec/API.md), by the hub id each preset must serve.
CONTRACT_MODELS = {
    "llama-3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.1-70b-instruct": "meta-llama/Llama-3.1-70B-Instruct",
    "llama-3.1-405b-instruct-fp8": "meta-llama/Llama-3.1-405B-Instruct",
    "llama-3.3-70b-instruct": "meta-llama/Llama-3.3-70B-Instruct",
    "llama-guard-3-1b": "meta-llama/Llama-Guard-3-1B",
    "llama-guard-3-8b": "meta-llama/Llama-Guard-3-8B",
}


def preset_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESETS.glob("*.yaml")) if p.name != "hardware.yaml"}


@pytest.fixture(autouse=True)
def _no_settings_env(monkeypatch):
    # Settings read LLAMASERVE_* from the environment above the YAML file: a stray one would mask the preset.
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def vllm_quantization_methods() -> tuple[set[str], set[str]]:
    """vLLM's accepted and deprecated quantization names, read from its source so that torch is not imported."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin, "vllm is not installed (pip install '.[cpu]' or '.[gpu]')"
    source = Path(spec.origin).parent / "model_executor" / "layers" / "quantization" / "__init__.py"
    tree = ast.parse(source.read_text())
    accepted: set[str] = set()
    deprecated: set[str] = set()
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        name = getattr(target, "id", None)
        if name == "QuantizationMethods" and isinstance(node.value, ast.Subscript):
            accepted = {e.value for e in node.value.slice.elts}
        elif name == "DEPRECATED_QUANTIZATION_METHODS":
            deprecated = {e.value for e in node.value.elts}
    assert accepted, f"QuantizationMethods not found in {source}"
    return accepted, deprecated


def test_one_preset_per_contract_model_and_hardware_entry():
    assert set(preset_files()) == set(CONTRACT_MODELS)
    assert set(HARDWARE) == set(CONTRACT_MODELS)


@pytest.mark.parametrize("name", sorted(CONTRACT_MODELS))
def test_preset_loads_and_matches_hardware(name):
    path = preset_files()[name]
    settings = load_settings(config=path)
    hw = HARDWARE[name]

    assert settings.model == CONTRACT_MODELS[name]
    assert settings.served_model_name, "served_model_name is what /info and /v1/models report"
    assert settings.dtype == "bfloat16"  # every Llama 3.x checkpoint is bf16; fp16 would risk overflow
    assert settings.max_model_len and settings.max_model_len <= 131072  # Llama 3.1+ context length
    gpus = settings.tensor_parallel_size * settings.pipeline_parallel_size
    assert gpus == hw["gpus"]
    # The preset's comment names the GPU count too: keep the prose and the numbers in step.
    assert f"{hw['gpus']} x" in path.read_text() or hw["gpus"] == 1
    assert hw["azure_instance_type"].startswith("Standard_N")
    assert hw["k8s_node_selector"]


@pytest.mark.parametrize("name", sorted(CONTRACT_MODELS))
def test_quantization_is_one_vllm_loads_without_flags(name):
    settings = load_settings(config=preset_files()[name])
    if settings.quantization is None:
        return
    accepted, deprecated = vllm_quantization_methods()
    assert settings.quantization in accepted
    assert settings.quantization not in deprecated, "needs --allow-deprecated-quantization, which llamaserve lacks"


def test_405b_is_fp8_on_at_least_8_gpus():
    settings = load_settings(config=preset_files()["llama-3.1-405b-instruct-fp8"])
    hw = HARDWARE["llama-3.1-405b-instruct-fp8"]
    assert hw["precision"] == "fp8"
    assert settings.quantization and "fp8" in settings.quantization
    assert settings.tensor_parallel_size * settings.pipeline_parallel_size >= 8
    # Multi-node variant: the same total GPUs spread over nodes by pipeline parallelism.
    mn = hw["multi_node"]
    assert mn["nodes"] * mn["gpus_per_node"] == settings.tensor_parallel_size * mn["pipeline_parallel_size"]
    assert mn["nodes"] * mn["gpus_per_node"] * mn["gpu_memory_gib"] >= 405 * 1.2  # FP8 weights + KV headroom


def test_70b_presets_use_tensor_parallel_4():
    for name in ("llama-3.1-70b-instruct", "llama-3.3-70b-instruct"):
        settings = load_settings(config=preset_files()[name])
        assert settings.tensor_parallel_size == 4
        assert settings.quantization is None  # bf16 weights: 4 x 80 GiB holds them with KV room


def test_unknown_key_in_a_preset_is_rejected(tmp_path):
    # The guarantee the presets rely on: a typo cannot silently fall back to a default.
    bad = tmp_path / "bad.yaml"
    bad.write_text(preset_files()["llama-3.1-8b-instruct"].read_text() + "tensor_paralel_size: 2\n")
    with pytest.raises(Exception, match="tensor_paralel_size"):
        load_settings(config=bad)

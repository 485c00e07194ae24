"""Builds LoRA adapters for the tiny model, in PEFT's layout, so the adapter path runs in the tests.

An adapter is `adapter_config.json` + `adapter_model.safetensors` with tensors named as PEFT saves them
(`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`). The weights are random with a wide spread
(std 0.5) so that, on the random tiny model, an adapter changes the greedy output; a seed picks the weights, so
two seeds are two different fine-tunes and the same seed is the same bytes on every machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from engine.adapters import module_dims
from engine.build_cache import build_once

BUILD_VERSION = "tiny-lora-v1"
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def tensor_name(layer: int, module: str, half: str) -> str:
    block = "self_attn" if module in _ATTENTION else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{half}.weight"


def write_adapter(
    out: Path,
    base_dir: Path,
    *,
    seed: int = 1,
    rank: int = 8,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    std: float = 0.5,
    config_overrides: dict | None = None,
    dims: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Writes a PEFT LoRA adapter for the model in `base_dir` into `out`. `dims` replaces the base's layer sizes
    (to make an adapter for another base); `config_overrides` edits adapter_config.json."""
    import torch
    from safetensors.torch import save_file

    base_config = json.loads((Path(base_dir) / "config.json").read_text())
    dims = dims or module_dims(base_config)
    targets = list(targets)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(base_config["num_hidden_layers"]):
        for module in targets:
            fan_in, fan_out = dims.get(module, (base_config["hidden_size"], base_config["hidden_size"]))
            tensors[tensor_name(layer, module, "A")] = torch.randn(rank, fan_in, generator=generator) * std
            tensors[tensor_name(layer, module, "B")] = torch.randn(fan_out, rank, generator=generator) * std
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": Path(base_dir).name,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        **(config_overrides or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def ensure_tiny_lora(cache_dir: Path, base_dir: Path, seed: int = 1) -> Path:
    """The tiny model's adapter number `seed`, built under the model cache on first use."""
    target = Path(cache_dir) / BUILD_VERSION / f"seed-{seed}"
    return build_once(target, "adapter_config.json", lambda staging: write_adapter(staging, base_dir, seed=seed))

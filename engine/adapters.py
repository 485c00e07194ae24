"""LoRA adapters on the served base model: which are loaded, and whether a directory holds one that fits.

vLLM checks little before an adapter reaches its workers, and a tensor of the wrong shape fails inside the engine.
So every adapter is read here first (config and tensor shapes, without loading the weights) against the base
model's layer sizes and the rank limit, and refused with a message that says what is wrong.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT's names: base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (".default" in some exports).
_TENSOR = re.compile(r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


def module_dims(base_config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each Llama linear layer an adapter may target."""
    hidden = base_config["hidden_size"]
    heads = base_config["num_attention_heads"]
    kv_heads = base_config.get("num_key_value_heads") or heads
    head_dim = base_config.get("head_dim") or hidden // heads
    inter = base_config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


class AdapterNotFound(EngineError):
    """No adapter at that name or path."""


class InvalidAdapter(EngineError):
    """The adapter does not fit this server (base model, rank limit, files); the message says why."""


class AdapterExists(EngineError):
    """An adapter of that name is loaded already."""


@dataclass(frozen=True)
class Adapter:
    name: str
    id: int  # vLLM's lora_int_id: unique per loaded adapter
    path: str  # the local directory vLLM reads
    source: str  # what the operator named: a path, a hub id
    rank: int
    base_model: str | None  # the adapter's own claim (base_model_name_or_path)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True)
class BaseLayers:
    """The base model's linear layers an adapter may target: name -> (in, out), and the layer count."""

    dims: dict[str, tuple[int, int]]
    num_layers: int

    @classmethod
    def of(cls, hf_config: Any) -> BaseLayers | None:
        config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        config = config.get("text_config") or config
        try:
            return cls(module_dims(config), int(config["num_hidden_layers"]))
        except (KeyError, TypeError):
            return None  # not a Llama-shaped config: vLLM's own checks are all there is


def inspect_adapter(path: Path, base: BaseLayers | None, max_rank: int) -> tuple[int, str | None]:
    """The adapter's rank and claimed base, or InvalidAdapter / AdapterNotFound saying what does not fit."""
    if not path.is_dir():
        raise AdapterNotFound(f"no adapter directory at {path}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise InvalidAdapter(f"{path} has no {CONFIG_FILE}: a LoRA adapter is a PEFT directory")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, OSError) as exc:
        raise InvalidAdapter(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidAdapter(f"{CONFIG_FILE} must have peft_type LORA, got {config.get('peft_type')!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidAdapter(f"the adapter's rank r must be a positive integer, got {rank!r}")
    ranks = [rank, *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > max_rank:
        raise InvalidAdapter(f"the adapter's rank {max(ranks)} is above this server's max_lora_rank {max_rank}")
    targets = config.get("target_modules")
    if base is not None and isinstance(targets, list):
        unknown = [t for t in targets if t.split(".")[-1] not in base.dims]
        if unknown:
            raise InvalidAdapter(
                f"target modules {unknown} are not in the base model (its LoRA targets: {sorted(base.dims)})"
            )
    _check_tensors(path, base, max_rank)
    return rank, config.get("base_model_name_or_path")


def _check_tensors(path: Path, base: BaseLayers | None, max_rank: int) -> None:
    from safetensors import safe_open

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        other = " (adapter_model.bin is not loaded: save with safe_serialization)" if (path / "adapter_model.bin").exists() else ""
        raise InvalidAdapter(f"{path} has no {WEIGHTS_FILE}{other}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise InvalidAdapter(f"{WEIGHTS_FILE} cannot be read: {exc}") from None
    if not shapes:
        raise InvalidAdapter(f"{WEIGHTS_FILE} holds no tensors")
    halves: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        m = _TENSOR.match(name)
        if m is None:
            raise InvalidAdapter(f"tensor {name} is not a LoRA weight of a decoder layer")
        layer, module, half = int(m.group(1)), m.group(2), m.group(3)
        if len(shape) != 2:
            raise InvalidAdapter(f"tensor {name} has shape {list(shape)}, not a matrix")
        if base is not None:
            if module not in base.dims:
                raise InvalidAdapter(f"tensor {name} targets {module}, which the base model does not have")
            if layer >= base.num_layers:
                raise InvalidAdapter(f"tensor {name} is for layer {layer}; the base model has {base.num_layers}")
        halves.setdefault((layer, module), {})[half] = shape
    for (layer, module), pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise InvalidAdapter(f"layer {layer} {module} has lora_{''.join(pair)} without its other half")
        r = pair["A"][0]
        if pair["B"][1] != r:
            raise InvalidAdapter(f"layer {layer} {module}: lora_A has rank {r} but lora_B has rank {pair['B'][1]}")
        if r > max_rank:
            raise InvalidAdapter(f"layer {layer} {module} has rank {r}, above this server's max_lora_rank {max_rank}")
        if base is not None:
            fan_in, fan_out = base.dims[module]
            if (pair["A"][1], pair["B"][0]) != (fan_in, fan_out):
                raise InvalidAdapter(
                    f"layer {layer} {module} maps {pair['A'][1]} -> {pair['B'][0]} features; the base model's "
                    f"{module} maps {fan_in} -> {fan_out}: the adapter was trained for another base model"
                )


class AdapterSet:
    """The loaded adapters by name. Loads and unloads run one at a time (they are rare, and ids must not race)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Adapter] = {}
        self._last_id = 0
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Adapter | None:
        return self._by_name.get(name)

    def all(self) -> list[Adapter]:
        return list(self._by_name.values())

    def new_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def put(self, adapter: Adapter) -> None:
        self._by_name[adapter.name] = adapter

    def pop(self, name: str) -> Adapter:
        try:
            return self._by_name.pop(name)
        except KeyError:
            raise AdapterNotFound(f"no adapter named {name!r} is loaded") from None

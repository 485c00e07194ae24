"""What the engine is started with: the server's settings, mapped for vLLM (engine/engine_config.py builds vLLM's
arguments from them). No vLLM import here, so the settings can describe the engine without loading it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import processes


@dataclass(frozen=True)
class EngineOptions:
    model: str
    served_model_name: str
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    # None: vLLM's default for its API server on this platform (engine/engine_config.py).
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    long_prefill_token_threshold: int | None = None
    speculative_config: Mapping[str, Any] | None = None
    compilation_config: Mapping[str, Any] | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None
    enforce_eager: bool = False
    distributed_executor_backend: str | None = None
    cpu_kvcache_space_gib: int | None = None
    seed: int = 0
    max_logprobs: int = 20
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    disable_log_stats: bool = False  # the guard engine: its vllm:* series would double the main engine's
    # vLLM's own span per request (`llm_request`), exported here; None: vLLM traces nothing.
    otlp_traces_endpoint: str | None = None
    otlp_traces_protocol: str = "http/protobuf"
    process_start_method: processes.StartMethod = "auto"  # how EngineCore and its workers start (engine/processes.py)
    # Any other argument of vLLM's engine (AsyncEngineArgs), by its name: what `vllm serve --NAME` would set.
    engine_args: Mapping[str, Any] = field(default_factory=dict)

"""vLLM's engine configuration, built the way `vllm serve` builds it.

vLLM sizes its batch (max_num_seqs, max_num_batched_tokens) from the GPU's name and memory only for its API server
and `LLM` contexts (EngineArgs.get_batch_defaults): built under any other usage context, an H100 would get the
generic 128 sequences / 2048 tokens instead of `vllm serve`'s 1024 / 8192. So the engine is configured under the
API server's usage context, from the same AsyncEngineArgs that `vllm serve` fills from its flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.usage.usage_lib import UsageContext

from engine.options import EngineOptions

USAGE_CONTEXT = UsageContext.OPENAI_API_SERVER

# vLLM arguments llamaserve sets from its own settings or decisions: an `engine_args` entry may not set them too.
# Each names where its value comes from.
OWNED_ARGS = {
    "model": "the model setting",
    "served_model_name": "the served_model_name setting",
    "dtype": "the dtype setting",
    "max_model_len": "the max_model_len setting",
    "tensor_parallel_size": "the tensor_parallel_size setting",
    "pipeline_parallel_size": "the pipeline_parallel_size setting",
    "gpu_memory_utilization": "the gpu_memory_utilization setting",
    "quantization": "the quantization setting",
    "kv_cache_dtype": "the kv_cache_dtype setting",
    "max_num_seqs": "the max_num_seqs setting",
    "max_num_batched_tokens": "the max_num_batched_tokens setting",
    "enable_chunked_prefill": "the enable_chunked_prefill setting",
    "enable_prefix_caching": "the enable_prefix_caching setting",
    "long_prefill_token_threshold": "the long_prefill_token_threshold setting",
    "speculative_config": "the speculative_config setting",
    "compilation_config": "the compilation_config setting",
    "trust_remote_code": "the trust_remote_code setting",
    "enforce_eager": "the enforce_eager setting",
    "distributed_executor_backend": "the distributed_executor_backend setting",
    "seed": "the seed setting",
    "max_logprobs": "the max_logprobs and max_best_of settings",
    "enable_lora": "the lora_adapters and allow_runtime_lora settings",
    "max_loras": "the max_loras setting",
    "max_lora_rank": "the max_lora_rank setting",
    "max_cpu_loras": "the max_cpu_loras setting",
    "generation_config": "llamaserve (sampling defaults come from the API contract, not the checkpoint)",
    "disable_log_stats": "llamaserve (the engine's metrics feed /metrics)",
    "otlp_traces_endpoint": "the otlp_traces_endpoint setting",
}


def engine_arg_names() -> frozenset[str]:
    """Every argument of vLLM's engine a `vllm serve` flag can set."""
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs) if not f.name.startswith("_"))


def check_engine_args(names: Iterable[str]) -> None:
    """Raises ValueError naming each entry that is no vLLM engine argument, or one that a setting owns."""
    known = engine_arg_names()
    problems = []
    for name in sorted(names):
        if name in OWNED_ARGS:
            problems.append(f"{name} is set by {OWNED_ARGS[name]}")
        elif name not in known:
            problems.append(f"{name} is not an argument of vLLM's engine (AsyncEngineArgs)")
    if problems:
        raise ValueError("; ".join(problems))


def engine_args(options: EngineOptions) -> AsyncEngineArgs:
    kwargs: dict[str, Any] = dict(
        model=options.model,
        served_model_name=options.served_model_name,
        dtype=options.dtype,
        max_model_len=options.max_model_len,
        tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size,
        quantization=options.quantization,
        kv_cache_dtype=options.kv_cache_dtype,
        max_num_seqs=options.max_num_seqs,
        max_num_batched_tokens=options.max_num_batched_tokens,
        enable_chunked_prefill=options.enable_chunked_prefill,
        enable_prefix_caching=options.enable_prefix_caching,
        speculative_config=dict(options.speculative_config) if options.speculative_config is not None else None,
        trust_remote_code=options.trust_remote_code,
        enforce_eager=options.enforce_eager,
        distributed_executor_backend=options.distributed_executor_backend,
        seed=options.seed,
        max_logprobs=options.max_logprobs,
        enable_lora=options.enable_lora,
        max_loras=options.max_loras,
        max_lora_rank=options.max_lora_rank,
        max_cpu_loras=options.max_cpu_loras,
        # Sampling defaults come from the API contract, not from the checkpoint's generation_config.
        generation_config="vllm",
        disable_log_stats=options.disable_log_stats,
        otlp_traces_endpoint=options.otlp_traces_endpoint,
    )
    # Unset: vLLM's own default (a default factory or a class constant), as `vllm serve` without the flag.
    if options.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    if options.long_prefill_token_threshold is not None:
        kwargs["long_prefill_token_threshold"] = options.long_prefill_token_threshold
    if options.compilation_config is not None:
        kwargs["compilation_config"] = dict(options.compilation_config)
    check_engine_args(options.engine_args)
    return AsyncEngineArgs(**kwargs, **dict(options.engine_args))


def vllm_config(args: AsyncEngineArgs) -> VllmConfig:
    """The engine's configuration, as `vllm serve` derives it from the same arguments on this platform."""
    return args.create_engine_config(usage_context=USAGE_CONTEXT)

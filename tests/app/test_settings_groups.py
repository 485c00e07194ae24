"""The settings stay one flat model (env, flags and YAML keep their names); each consumer takes its typed group.

In process: the engine group maps onto EngineOptions field by field, and the protection group reaches the
middlewares and the limits of an app built by create_app (scripted engine, no vLLM)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine.core import EngineOptions
from server.app import engine_options
from server.settings import ApiLimits, EngineSettings, Protection, Settings
from tests.scripted_engine import InProcess, ScriptedEngine, settings

# A value other than the default for every engine setting but the model's location.
ENGINE_VALUES = {
    "dtype": "float16", "max_model_len": 77, "tensor_parallel_size": 2, "pipeline_parallel_size": 3,
    "gpu_memory_utilization": 0.5, "quantization": "fp8", "kv_cache_dtype": "fp8", "max_num_seqs": 3,
    "max_num_batched_tokens": 4096, "enable_chunked_prefill": False, "enable_prefix_caching": False,
    "long_prefill_token_threshold": 512, "speculative_config": {"method": "ngram", "num_speculative_tokens": 3},
    "compilation_config": {"cudagraph_mode": "PIECEWISE"}, "engine_args": {"load_format": "dummy"},
    "trust_remote_code": True, "chat_template": "/templates/chat.jinja", "enforce_eager": True,
    "distributed_executor_backend": "ray", "cpu_kvcache_space_gib": 3, "seed": 7, "max_loras": 2,
    "max_lora_rank": 8, "max_cpu_loras": 4, "process_start_method": "spawn",
}
LOCATION = {"model", "served_model_name", "model_cache_dir"}
# What engine_options derives from other settings rather than copying one; disable_log_stats is the guard
# engine's alone (server/safety/guards.py sets it); the trace endpoint and protocol come from the tracing settings.
DERIVED = {"model", "served_model_name", "max_logprobs", "enable_lora", "disable_log_stats", "otlp_traces_endpoint",
           "otlp_traces_protocol"}


def _names(group: type) -> set[str]:
    return {f.name for f in dataclasses.fields(group)}


def test_every_engine_setting_reaches_the_engine_options(clean_env):
    assert set(ENGINE_VALUES) == _names(EngineSettings) - LOCATION, "give a new engine setting a value here"
    assert set(EngineOptions.__dataclass_fields__) - DERIVED == set(ENGINE_VALUES), "wire a new engine option"
    default = engine_options(Settings(model="/models/m"))
    for name, value in ENGINE_VALUES.items():
        changed = engine_options(Settings(model="/models/m", **{name: value}))
        assert getattr(default, name) != value and getattr(changed, name) == value, name
        assert dataclasses.replace(changed, **{name: getattr(default, name)}) == default, name


def test_the_groups_are_disjoint_and_read_the_flat_settings(clean_env, tmp_path):
    groups = [_names(EngineSettings), _names(ApiLimits), _names(Protection)]
    assert all(a.isdisjoint(b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert set().union(*groups) <= set(Settings.model_fields)
    config = tmp_path / "s.yaml"
    config.write_text("max_n: 3\nrequest_timeout_s: 12\n")
    clean_env.setenv("LLAMASERVE_TRUSTED_PROXIES", "10.0.0.0/8,192.0.2.1")
    clean_env.setenv("LLAMASERVE_DTYPE", "float16")
    s = Settings(config=config, max_request_bytes=999)
    assert s.api_limits.max_n == 3 and s.protection.request_timeout_s == 12
    assert s.protection.trusted_proxies == ("10.0.0.0/8", "192.0.2.1") and s.engine.dtype == "float16"
    assert s.protection.max_request_bytes == 999
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.protection.max_request_bytes = 1  # type: ignore[misc]


def _run(cfg: Settings, calls):
    async def main():
        async with InProcess(ScriptedEngine(), cfg) as client:
            return [await call(client) for call in calls]

    return asyncio.run(main())


def test_the_protection_group_reaches_the_body_limit_and_the_key_check(clean_env):
    def big(c):
        return c.post("/v1/tokenize", content=b'{"prompt": "' + b"a" * 300 + b'"}',
                      headers={"api-key": "k1", "content-type": "application/json"})

    def metrics_plain(c):
        return c.get("/metrics")

    def metrics_keyed(c):
        return c.get("/metrics", headers={"api-key": "k1"})

    keyed = settings(api_keys="k1", max_request_bytes=200, metrics_require_key=True)
    too_big, plain, with_key = _run(keyed, [big, metrics_plain, metrics_keyed])
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert plain.status_code == 401 and with_key.status_code == 200
    (open_metrics,) = _run(settings(api_keys="k1"), [metrics_plain])
    assert open_metrics.status_code == 200 and b"llamaserve_requests_total" in open_metrics.content


def test_tokenize_takes_a_request_from_the_rate_limits_but_no_tokens(clean_env):
    def tokenize(c):
        return c.post("/v1/tokenize", json={"prompt": "hello there"})

    # One token a minute: a tokenize request that were charged its 11 tokens would be refused.
    assert [r.status_code for r in _run(settings(rate_limit_tpm=1), [tokenize] * 3)] == [200, 200, 200]
    first, second = _run(settings(rate_limit_rpm=1), [tokenize] * 2)
    assert first.status_code == 200 and second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"

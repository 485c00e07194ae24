"""The engine's settings: vLLM's common engine arguments by name and every other one through `engine_args`, from
each source, checked against vLLM's engine arguments, and the AsyncEngineArgs they become (engine/engine_config.py).
In process; no engine starts (vLLM is imported to read its argument names)."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError
from vllm.engine.arg_utils import AsyncEngineArgs

from engine import engine_config
from server import cli
from server.app import engine_options
from server.safety.guards import local_guard_options
from server.settings import Settings

# A value other than vLLM's default for each named engine setting, and one argument only engine_args reaches.
NAMED = {
    "max_num_seqs": 48, "max_num_batched_tokens": 3072, "enable_chunked_prefill": False,
    "enable_prefix_caching": False, "long_prefill_token_threshold": 256, "kv_cache_dtype": "fp8",
    "gpu_memory_utilization": 0.5, "compilation_config": {"cudagraph_mode": "PIECEWISE"},
    "speculative_config": {"method": "ngram", "num_speculative_tokens": 3},
}
UNSET_BY_DEFAULT = ["max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill", "enable_prefix_caching",
                    "long_prefill_token_threshold", "kv_cache_dtype", "gpu_memory_utilization",
                    "compilation_config", "speculative_config", "block_size", "async_scheduling"]


def test_engine_args_names_are_checked_against_vllms(clean_env):
    with pytest.raises(ValidationError, match="blok_size is not an argument of vLLM's engine"):
        Settings(engine_args={"blok_size": 32})
    with pytest.raises(ValidationError, match="max_num_seqs is set by the max_num_seqs setting"):
        Settings(engine_args={"max-num-seqs": 4})
    with pytest.raises(ValidationError, match="generation_config is set by llamaserve"):
        Settings(engine_args={"generation_config": "auto"})
    with pytest.raises(ValidationError, match="not a JSON object"):
        Settings(engine_args="{block_size: 32}")
    assert Settings(engine_args={"block-size": 32, "async_scheduling": False}).engine_args == {
        "block_size": 32, "async_scheduling": False,
    }


def test_cli_names_an_unknown_engine_argument(clean_env):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--engine-args", '{"blok_size": 32}'])
    assert "invalid settings" in str(info.value.code) and "blok_size is not an argument" in str(info.value.code)


def test_engine_settings_from_flags_env_and_yaml(clean_env, tmp_path, monkeypatch):
    config = tmp_path / "s.yaml"
    config.write_text(
        "max_num_batched_tokens: 8192\ncompilation_config: {cudagraph_mode: PIECEWISE}\n"
        "engine_args: {async-scheduling: false}\n"
    )
    clean_env.setenv("LLAMASERVE_SPECULATIVE_CONFIG", '{"method": "ngram", "num_speculative_tokens": 2}')
    clean_env.setenv("LLAMASERVE_ENABLE_PREFIX_CACHING", "false")
    seen = {}
    monkeypatch.setattr(cli, "serve", lambda settings: seen.setdefault("s", settings))
    cli.main(["serve", "--allow-unauthenticated", "--config", str(config), "--no-enable-chunked-prefill", "--long-prefill-token-threshold",
              "128", "--engine-args", '{"block_size": 32}'])
    e = seen["s"].engine
    assert (e.max_num_batched_tokens, e.compilation_config) == (8192, {"cudagraph_mode": "PIECEWISE"})
    assert e.speculative_config == {"method": "ngram", "num_speculative_tokens": 2}
    assert (e.enable_prefix_caching, e.enable_chunked_prefill, e.long_prefill_token_threshold) == (False, False, 128)
    assert e.engine_args == {"block_size": 32}  # the flag replaces the YAML's map, as for every setting


def test_named_settings_and_engine_args_become_vllms_arguments(clean_env):
    args = engine_config.engine_args(engine_options(Settings(model="/m", **NAMED, engine_args={"block_size": 32})))
    for name, value in NAMED.items():
        expected = vars(AsyncEngineArgs(model="/m", **{name: value}))[name]  # after vLLM's own __post_init__
        assert getattr(args, name) == expected, name
    assert args.block_size == 32
    assert (args.generation_config, args.max_logprobs) == ("vllm", 32)


def test_unset_engine_settings_leave_vllms_defaults(clean_env):
    args = engine_config.engine_args(engine_options(Settings(model="/m")))
    default = AsyncEngineArgs(model="/m")
    for name in UNSET_BY_DEFAULT:
        assert getattr(args, name) == getattr(default, name), name


def test_every_owned_argument_is_one_of_vllms(clean_env):
    """A typo in OWNED_ARGS would let engine_args set what a setting owns, and name a setting for nothing."""
    assert set(engine_config.OWNED_ARGS) <= engine_config.engine_arg_names()
    made = engine_config.engine_args(engine_options(Settings(model="/m")))
    fields = {f.name for f in dataclasses.fields(made)}
    assert set(engine_config.OWNED_ARGS) <= fields


def test_a_local_guard_keeps_none_of_the_main_models_engine_arguments(clean_env):
    settings = Settings(model="/m", guard="local", guard_model="/g", guard_gpu_memory_utilization=0.18,
                        max_num_batched_tokens=8192, long_prefill_token_threshold=64,
                        speculative_config={"method": "ngram", "num_speculative_tokens": 2},
                        engine_args={"load_format": "dummy"})
    main = engine_options(settings)
    guard = local_guard_options(settings, main)
    assert main.speculative_config and main.engine_args and main.max_num_batched_tokens == 8192
    assert guard.speculative_config is None and guard.engine_args == {}
    assert guard.max_num_batched_tokens is None and guard.long_prefill_token_threshold is None


def test_gpu_memory_share_is_vllms_or_what_a_local_guard_leaves(clean_env):
    assert engine_options(Settings(model="/m")).gpu_memory_utilization is None  # vLLM's default
    assert engine_options(Settings(model="/m", gpu_memory_utilization=0.8)).gpu_memory_utilization == 0.8
    guarded = Settings(model="/m", guard="local", guard_model="/g", guard_gpu_memory_utilization=0.18)
    assert engine_options(guarded).gpu_memory_utilization == 0.82
    assert local_guard_options(guarded, engine_options(guarded)).gpu_memory_utilization == 0.18

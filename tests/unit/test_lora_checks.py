"""Fast checks of the LoRA settings and of the adapter inspection that guards the engine (no engine started)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.adapters import AdapterNotFound, BaseLayers, InvalidAdapter, inspect_adapter, module_dims
from tests.tiny_lora import ensure_tiny_lora, tensor_name, write_adapter
from server.models import adapters as server_adapters
from server import cli
from server.adapter_settings import lora_enabled
from server.app import engine_options
from server.protection.security import key_id
from server.settings import Settings, load_settings


@pytest.fixture(scope="module")
def base(tiny_model: Path) -> BaseLayers:
    layers = BaseLayers.of(json.loads((tiny_model / "config.json").read_text()))
    assert layers is not None
    return layers


# --- settings


def test_adapters_from_repeated_flags_env_and_yaml(clean_env, tmp_path):
    parser = argparse.ArgumentParser()
    cli._add_setting_flags(parser)
    flags = parser.parse_args(["--lora", "a=/models/a", "--lora", "b=org/b"])
    assert load_settings(lora_adapters=flags.lora_adapters).lora_adapters == {"a": "/models/a", "b": "org/b"}
    clean_env.setenv("LLAMASERVE_LORA_ADAPTERS", "c=/x, d=rel/d")
    assert load_settings().lora_adapters == {"c": "/x", "d": "rel/d"}
    clean_env.delenv("LLAMASERVE_LORA_ADAPTERS")
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("lora_adapters:\n  support: /m/support\nlora_access:\n  abcd1234: support\n")
    s = load_settings(config=yaml_file)
    assert (s.lora_adapters, s.lora_access) == ({"support": "/m/support"}, {"abcd1234": ["support"]})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"lora_adapters": ["no-path"]}, "NAME=PATH"),
        ({"lora_adapters": ["a=/x", "a=/y"]}, "named twice"),
        ({"lora_adapters": ["bad name=/x"]}, "adapter name"),
        ({"served_model_name": "m", "lora_adapters": ["m=/x"]}, "base model"),
        ({"max_lora_rank": 12}, "max_lora_rank"),
        ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras"),
        ({"api_keys": "k1", "admin_api_keys": "k1"}, "different"),
        ({"api_keys": "k1", "allow_runtime_lora": True}, "admin_api_keys"),
        ({"lora_access": "{not json"}, "JSON"),
    ],
)
def test_inconsistent_lora_settings_are_refused(clean_env, fields, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)


def test_lora_is_on_in_the_engine_only_when_it_can_be_used(clean_env, tiny_model):
    assert not engine_options(Settings(model=str(tiny_model))).enable_lora
    assert engine_options(Settings(model=str(tiny_model), allow_runtime_lora=True)).enable_lora
    on = engine_options(Settings(model=str(tiny_model), lora_adapters={"a": "/x"}, max_lora_rank=8, max_loras=2))
    assert (on.enable_lora, on.max_lora_rank, on.max_loras, on.max_cpu_loras) == (True, 8, 2, None)
    assert lora_enabled(Settings(lora_adapters={"a": "/x"}))


def test_allow_list_matches_a_key_by_id_or_by_the_key(clean_env):
    s = Settings(lora_access={key_id("key-a"): ["alpha"], "key-b": ["beta", "shared"]})
    assert server_adapters.allowed_names(s, key_id("key-a")) == {"alpha"}
    assert server_adapters.allowed_names(s, key_id("key-b")) == {"beta", "shared"}
    assert server_adapters.allowed_names(s, key_id("key-c")) is None  # unlisted keys: every adapter
    assert server_adapters.allowed_names(s, None) is None  # a server without keys has no tenants


# --- sources


def resolve(source: str) -> Path:
    return asyncio.run(server_adapters.resolve_source(source))


def test_relative_paths_resolve_under_azureml_model_dir(monkeypatch, tmp_path):
    (tmp_path / "adapters" / "support").mkdir(parents=True)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    assert resolve("adapters/support") == tmp_path / "adapters" / "support"
    assert resolve(str(tmp_path)) == tmp_path


def test_a_hub_id_the_host_cannot_fetch_is_not_found(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdapterNotFound, match="hub"):
        resolve("nobody/no-such-adapter")
    with pytest.raises(AdapterNotFound, match="no adapter at"):
        resolve("not a hub id")


# --- inspection


def test_the_tiny_adapter_fits_and_is_built_deterministically(tiny_model, base, tmp_path):
    first = ensure_tiny_lora(tmp_path / "one", tiny_model, seed=1)
    second = ensure_tiny_lora(tmp_path / "two", tiny_model, seed=1)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    other = ensure_tiny_lora(tmp_path / "one", tiny_model, seed=2)
    assert (other / "adapter_model.safetensors").read_bytes() != (first / "adapter_model.safetensors").read_bytes()
    assert inspect_adapter(first, base, max_rank=8) == (8, tiny_model.name)


def _variant(tmp_path: Path, tiny_model: Path, **kwargs) -> Path:
    return write_adapter(tmp_path / "adapter", tiny_model, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 16}, "rank 16 is above this server's max_lora_rank 8"),
        ({"targets": ("q_proj", "lm_head")}, "target modules ['lm_head'] are not in the base model"),
        ({"config_overrides": {"peft_type": "PREFIX_TUNING"}}, "peft_type LORA"),
        ({"config_overrides": {"r": 0}}, "positive integer"),
        ({"config_overrides": {"rank_pattern": {"q_proj": 32}}}, "rank 32 is above"),
        ({"config_overrides": {"target_modules": ["q_proj"]}, "targets": ("q_proj", "v_proj")}, None),
    ],
)
def test_config_problems_are_named(tiny_model, base, tmp_path, kwargs, message):
    path = _variant(tmp_path, tiny_model, **kwargs)
    if message is None:  # the config lists fewer modules than the tensors: tensors decide, and they fit
        assert inspect_adapter(path, base, 8)[0] == 8
        return
    with pytest.raises(InvalidAdapter) as info:
        inspect_adapter(path, base, 8)
    assert message in str(info.value)


def test_tensor_problems_are_named(tiny_model, base, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    dims = module_dims(json.loads((tiny_model / "config.json").read_text()))
    wide = _variant(tmp_path / "w", tiny_model, dims={m: (i * 2, o) for m, (i, o) in dims.items()})
    with pytest.raises(InvalidAdapter, match="maps 256 -> 128 features; the base model's q_proj maps 128 -> 128"):
        inspect_adapter(wide, base, 8)

    def edited(name: str, change) -> Path:
        path = _variant(tmp_path / name, tiny_model)
        tensors = load_file(str(path / "adapter_model.safetensors"))
        change(tensors)
        save_file(tensors, str(path / "adapter_model.safetensors"))
        return path

    half = edited("half", lambda t: t.pop(tensor_name(1, "v_proj", "B")))
    with pytest.raises(InvalidAdapter, match="layer 1 v_proj has lora_A without its other half"):
        inspect_adapter(half, base, 8)
    deep = edited("deep", lambda t: t.update({tensor_name(5, "q_proj", "A"): torch.zeros(8, 128),
                                             tensor_name(5, "q_proj", "B"): torch.zeros(128, 8)}))
    with pytest.raises(InvalidAdapter, match="layer 5; the base model has 2"):
        inspect_adapter(deep, base, 8)
    ranks = edited("ranks", lambda t: t.update({tensor_name(0, "q_proj", "B"): torch.zeros(128, 4)}))
    with pytest.raises(InvalidAdapter, match="lora_A has rank 8 but lora_B has rank 4"):
        inspect_adapter(ranks, base, 8)
    stray = edited("stray", lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(4, 4)}))
    with pytest.raises(InvalidAdapter, match="not a LoRA weight"):
        inspect_adapter(stray, base, 8)


def test_missing_and_unreadable_files_are_named(tiny_model, base, tmp_path):
    with pytest.raises(AdapterNotFound):
        inspect_adapter(tmp_path / "absent", base, 8)
    path = _variant(tmp_path, tiny_model)
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    with pytest.raises(InvalidAdapter, match="adapter_model.bin is not loaded"):
        inspect_adapter(path, base, 8)
    (path / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(InvalidAdapter, match="cannot be read"):
        inspect_adapter(path, base, 8)
    (path / "adapter_config.json").write_text("{")
    with pytest.raises(InvalidAdapter, match="not valid JSON"):
        inspect_adapter(path, base, 8)
    (path / "adapter_config.json").unlink()
    with pytest.raises(InvalidAdapter, match="has no adapter_config.json"):
        inspect_adapter(path, base, 8)


# --- start-up, in process (no engine: the checks come before it is needed)


class _RefusingEngine:
    """An engine whose adapters never fit, to see what the start does with them."""

    def __init__(self) -> None:
        self.info = type("Info", (), {"name": "base", "path": "/base"})()
        self.stopped = False

    async def load_adapter(self, name, path, source, replace=False):
        raise InvalidAdapter(f"rank of {name} too high")

    def shutdown(self) -> None:
        self.stopped = True


def test_an_adapter_named_at_start_that_does_not_load_fails_the_start(clean_env, tmp_path):
    from server.app import _load
    from server.protection.lifecycle import MODEL_LOAD_EXIT_CODE
    from server.state import ServerState

    engine = _RefusingEngine()
    state = ServerState(settings=Settings(lora_adapters={"support": str(tmp_path)}))
    exits: list[int] = []
    clean_env.setattr(state.lifecycle, "exit_now", exits.append)  # the real one signals this process
    asyncio.run(_load(state, lambda _: engine, lambda _: None))
    assert state.engine is None and engine.stopped
    assert f"support={tmp_path}: rank of support too high" in state.load_error
    assert exits == [MODEL_LOAD_EXIT_CODE]


def test_the_guard_engine_never_gets_lora(clean_env, tiny_model):
    from server.safety.guards import local_guard_options

    settings = Settings(model=str(tiny_model), allow_runtime_lora=True, guard="local", guard_model="/guard")
    assert engine_options(settings).enable_lora
    assert not local_guard_options(settings, engine_options(settings)).enable_lora

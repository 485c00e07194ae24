"""Builds two vLLM engine configurations per case and writes them, flattened, as JSON: the one llamaserve builds
from its settings (server.app.engine_options -> engine.engine_config) and the one `vllm serve` builds from the same
flags (vLLM's own argument parser -> AsyncEngineArgs.from_cli_args -> create_engine_config under the API server's
usage context, as vllm/entrypoints/launchers/api_server/entry.py does). No weights are read and no engine starts.

Run in a process of its own, `python -m tests.engine.engine_parity_probe GPU CASES.json OUT.json`, since the platform is
chosen once per process: GPU `cpu` keeps this host's platform; `h100` or `a100` installs a CUDA platform that
reports that GPU's name, memory and compute capability before vLLM resolves its platform. The CUDA kernels of
vLLM's GPU build are absent from its CPU build: stand-ins let their modules import and fail if anything calls them
(nothing does while a configuration is built). Everything else is vLLM's own CUDA platform code (its config checks
and defaults), run unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import types
from pathlib import Path
from typing import Any

GIB = 1 << 30
# What vLLM reads of a GPU while it builds a configuration: the name and memory (batch defaults in
# EngineArgs.get_batch_defaults) and the compute capability (kernels, fp8, CUDA graphs).
GPUS = {
    "h100": ("NVIDIA H100 80GB HBM3", 80 * GIB, (9, 0)),
    "a100": ("NVIDIA A100-SXM4-80GB", 80 * GIB, (8, 0)),
}


# What vLLM imports from its CUDA flash-attention build (vllm/v1/attention/backends/fa_utils.py), which a quantized
# model's configuration reaches through vLLM's model loader; none is called while a configuration is built.
FLASH_ATTENTION_NAMES = (
    "compile_flash_attn_varlen_func_from_specs", "fa_version_unsupported_reason", "flash_attn_varlen_func",
    "get_scheduler_metadata", "is_fa_version_supported",
)


def _kernels_absent(module: str, names: tuple[str, ...]) -> types.ModuleType:
    """A module of CUDA kernels that this CPU build lacks: importing it works, calling any of it fails loudly."""
    stub = types.ModuleType(module)

    def absent(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{module}.{name} was called while building a configuration: the CUDA kernels are absent")
        return call

    for name in names:
        setattr(stub, name, absent(name))
    return stub


def install_fake_gpu(kind: str) -> None:
    name, memory, capability = GPUS[kind]
    sys.modules.setdefault("vllm._C_stable_libtorch", types.ModuleType("vllm._C_stable_libtorch"))
    sys.modules.setdefault("vllm.vllm_flash_attn", _kernels_absent("vllm.vllm_flash_attn", FLASH_ATTENTION_NAMES))
    import vllm.platforms
    from vllm.platforms.cuda import CudaPlatformBase
    from vllm.platforms.interface import DeviceCapability

    class FakeGpuPlatform(CudaPlatformBase):
        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return name

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return memory

        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            return DeviceCapability(*capability)

        @classmethod
        def device_count(cls) -> int:
            return 8

        @classmethod
        def is_fully_connected(cls, physical_device_ids: list[int]) -> bool:
            return True

    assert vllm.platforms._current_platform is None, "vLLM chose its platform before the fake GPU was installed"
    vllm.platforms._current_platform = FakeGpuPlatform()
    # vLLM asks its CUTLASS kernels which capabilities they support while it imports its fp8 code; the CUDA build
    # answers by compute capability (csrc/quantization/w8a8/cutlass: fp8 from 8.9, block fp8 from 9.0, fp4 from 10.0).
    import vllm._custom_ops as ops

    ops.cutlass_scaled_mm_supports_fp8 = lambda cap: cap >= 89
    ops.cutlass_scaled_mm_supports_block_fp8 = lambda cap: cap >= 90
    ops.cutlass_scaled_mm_supports_fp4 = lambda cap: cap >= 100


def flatten(value: Any, path: str = "", out: dict[str, str] | None = None, seen: set[int] | None = None) -> dict[str, str]:
    """Every leaf of a configuration by its dotted path, as text (configs nest dataclasses, dicts and lists)."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if id(value) in seen:
            out[path] = "<cycle>"
            return out
        seen.add(id(value))
        for field in dataclasses.fields(value):
            flatten(getattr(value, field.name, None), f"{path}.{field.name}" if path else field.name, out, seen)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            flatten(value[key], f"{path}[{key!r}]", out, seen)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            flatten(item, f"{path}[{i}]", out, seen)
        if not value:
            out[path] = repr(value)
    elif isinstance(value, enum.Enum):
        out[path] = f"{type(value).__name__}.{value.name}"
    elif " object at 0x" in repr(value) and hasattr(value, "__dict__"):  # no repr of its own: compare its state
        out[f"{path}.<type>"] = type(value).__qualname__
        for name, item in sorted(vars(value).items()):
            flatten(item, f"{path}.{name}", out, seen)
    else:
        out[path] = repr(value)
    return out


def llamaserve_config(settings: dict[str, Any]) -> Any:
    from engine import engine_config
    from server.app import engine_options
    from server.settings import Settings

    options = engine_options(Settings(**settings))
    return engine_config.vllm_config(engine_config.engine_args(options))


def vllm_serve_config(argv: list[str]) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    return AsyncEngineArgs.from_cli_args(args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)


def main(gpu: str, cases_path: str, out_path: str) -> None:
    if gpu != "cpu":
        install_fake_gpu(gpu)
    cases = json.loads(Path(cases_path).read_text())
    results = {}
    for name, case in cases.items():
        ours = llamaserve_config(case["settings"])
        theirs = vllm_serve_config(case["argv"])
        results[name] = {"llamaserve": flatten(ours), "vllm_serve": flatten(theirs)}
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])

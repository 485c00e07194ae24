"""All llamaserve settings, in one place.

Precedence, highest first: command-line flags > environment variables (``LLAMASERVE_<FIELD>``) >
the YAML file named by ``--config`` / ``LLAMASERVE_CONFIG`` > the defaults below. Every field has the same
name in all four places: ``max_model_len`` is ``--max-model-len``, ``LLAMASERVE_MAX_MODEL_LEN`` and the
YAML key ``max_model_len``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from typing_extensions import Annotated

from server import adapter_settings

ENV_PREFIX = "LLAMASERVE_"
# Kubernetes' service links give every pod <SERVICE>_PORT=tcp://10.0.0.1:8000 for each Service in its namespace,
# so a Service named llamaserve sets LLAMASERVE_PORT. Such a value is an address, never a port or host to bind.
_SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


class _EnvSource(EnvSettingsSource):
    """The environment, less the service-link values of `port` and `host`: they fall back to YAML or defaults."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for name in ("port", "host"):
            if isinstance(values.get(name), str) and _SERVICE_LINK.match(values[name]):
                del values[name]
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="YAML settings file (lower precedence than env and flags)")

    # --- HTTP server
    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(8000, ge=1, le=65535, description="port to bind")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- model and engine (passed to vLLM)
    model: str | None = Field(
        None,
        description="model directory or hub id; unset: $AZUREML_MODEL_DIR, else the built-in tiny local model",
    )
    served_model_name: str | None = Field(None, description="name reported by /info, /v1/models and responses")
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "llamaserve", description="where the built-in tiny model is built"
    )
    dtype: str = Field("auto", description="weights/activations dtype: auto, bfloat16, float16, float32")
    max_model_len: int | None = Field(None, gt=0, description="context length (default: the model's)")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    quantization: str | None = Field(None, description="e.g. fp8")
    kv_cache_dtype: str = Field("auto")
    max_num_seqs: int | None = Field(None, gt=0, description="engine batch size bound")
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

    # --- API limits
    max_n: int = Field(16, ge=1, description="largest n accepted")
    max_best_of: int = Field(16, ge=1, description="largest best_of / beam width accepted")
    max_logprobs: int = Field(20, ge=0, description="largest logprobs / top_logprobs accepted")

    # --- security and protection
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys, comma-separated (primary,secondary)"
    )
    api_key_file: Path | None = Field(None, description="file with one API key per line (mounted secret)")
    metrics_require_key: bool = False
    rate_limit_rpm: int = Field(1000, ge=0, description="requests per minute per key; 0 turns it off")
    rate_limit_tpm: int = Field(200_000, ge=0, description="tokens per minute per key; 0 turns it off")
    max_concurrent_requests: int = Field(256, ge=1, description="generation requests in flight at once")
    max_queued_requests: int = Field(256, ge=0, description="waiting beyond that before 429")
    request_timeout_s: float = Field(600, gt=0)
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0)
    shutdown_grace_s: float = Field(30, ge=0, description="drain time for in-flight requests on SIGTERM")
    log_prompts: bool = Field(False, description="include prompt and output text in access logs")

    # --- LoRA adapters (fine-tunes of the base model); LoRA is on in the engine only if one is configured or
    # runtime loading is allowed, since it costs engine set-up (and torch.compile on CPU). See server/adapters.py.
    lora_adapters: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="adapters served from the start, NAME=PATH (repeat --lora, or comma-separate); PATH: a PEFT "
        "directory, a hub id, or a path under $AZUREML_MODEL_DIR",
    )
    allow_runtime_lora: bool = Field(False, description="admin routes /v1/load_lora_adapter, /v1/unload_lora_adapter")
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="keys for the admin routes, comma-separated; distinct from api_keys"
    )
    lora_access: dict[str, list[str]] = Field(
        default_factory=dict,
        description='per-key adapter allow-list, JSON {"KEY_ID or KEY": ["adapter", ...]}; unlisted keys may use all',
    )
    max_loras: int = Field(1, ge=1, description="adapters in one engine batch at once (vLLM max_loras)")
    max_lora_rank: int = Field(16, description="largest adapter rank: 1, 8, 16, 32, 64, 128, 256, 320 or 512")
    max_cpu_loras: int | None = Field(None, ge=1, description="adapters kept in CPU memory, LRU (default: max_loras)")

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("lora_adapters", mode="before")
    @classmethod
    def _named_paths(cls, value: Any) -> Any:
        return adapter_settings.named_paths(value)

    @field_validator("lora_access", mode="before")
    @classmethod
    def _access_json(cls, value: Any) -> Any:
        return adapter_settings.access_map(value)

    @model_validator(mode="after")
    def _lora_consistent(self) -> Settings:
        adapter_settings.check(self)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = init_settings.init_kwargs.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise FileNotFoundError(f"settings file not found: {yaml_path}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    def all_api_keys(self) -> list[str]:
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_key_file is not None:
            keys += [line.strip() for line in self.api_key_file.read_text().splitlines() if line.strip()]
        return keys


def load_settings(**overrides: Any) -> Settings:
    """Settings from every source; ``overrides`` are the command-line flags that were given."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

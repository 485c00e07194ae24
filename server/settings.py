"""All llamaserve settings, in one place.

Precedence, highest first: command-line flags > environment variables (``LLAMASERVE_<FIELD>``) >
the YAML file named by ``--config`` / ``LLAMASERVE_CONFIG`` > the defaults below. Every field has the same
name in all four places: ``max_model_len`` is ``--max-model-len``, ``LLAMASERVE_MAX_MODEL_LEN`` and the
YAML key ``max_model_len``.

The model stays flat, since those four names are what Helm charts, Azure ML deployments and the docs use; each part
of the server takes the typed group it uses instead of the whole of it: `engine` (what vLLM is started with;
its fields live in server/engine_settings.py),
`api_limits` (what one request may ask for) and `protection` (connections, bodies, rates, admission, timeouts).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from typing_extensions import Annotated

from engine.guard_format import resolve_codes
from engine.tool_format import TOOL_CALL_FORMATS
from server import adapter_settings
from server.engine_settings import EngineFields, EngineSettings
from server.store_settings import StoreFields
from server.tracing_settings import TracingFields

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


class Settings(EngineFields, StoreFields, TracingFields, BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="YAML settings file (lower precedence than env and flags)")

    # --- HTTP server
    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(8000, ge=1, le=65535, description="port to bind")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- API limits
    max_n: int = Field(16, ge=1, description="largest n accepted")
    max_best_of: int = Field(16, ge=1, description="largest best_of / beam width accepted")
    max_logprobs: int = Field(20, ge=0, description="largest logprobs / top_logprobs accepted")
    max_prompts_per_request: int = Field(64, ge=1, description="most prompts in one completions request")
    max_sequences_per_request: int = Field(
        64, ge=1, description="most engine sequences one request may start: prompts x candidates (best_of, else n)"
    )
    max_chat_messages: int = Field(2048, ge=1, description="most messages in one chat or tokenize request")
    max_prompt_chars: int = Field(
        2_000_000, ge=1, description="most characters of prompt text in one request (all prompts; rendered chat)"
    )

    # --- structured output and tool calling
    grammar_timeout_s: float = Field(
        10.0, gt=0, description="longest a response_format or forced tool call grammar may take to build (else 400)"
    )
    tool_call_format: Literal[("auto", *TOOL_CALL_FORMATS)] = Field(
        "auto", description="how the model writes tool calls; auto: read from its config and chat template"
    )

    # --- security and protection
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys, comma-separated (primary,secondary)"
    )
    api_key_file: Path | None = Field(
        None, description="file with one API key per line (mounted secret); blank lines and # comments are skipped"
    )
    allow_unauthenticated: bool = Field(
        False, description="serve without API keys (only behind a gateway that authenticates, or for local use)"
    )
    metrics_require_key: bool = False
    metrics_show_adapters: bool = Field(
        False, description="every /metrics reader sees the series that name LoRA adapters (vllm:lora_requests_info): "
        "the Inference Gateway's endpoint picker routes by them; otherwise only an admin key, with metrics_require_key")
    rate_limit_rpm: int = Field(1000, ge=0, description="requests per minute per key; 0 turns it off")
    rate_limit_tpm: int = Field(200_000, ge=0, description="tokens per minute per key; 0 turns it off")
    rate_limit_default_reserve_tokens: int = Field(
        256, ge=1, description="tokens reserved per sequence for a request without max_tokens, until settled")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IPs/CIDRs whose X-Forwarded-For names the client (comma-separated); none by default",
    )
    header_timeout_s: float = Field(10, gt=0, description="time a connection gets to send a request's headers")
    body_timeout_s: float = Field(30, gt=0, description="time a request gets to send its whole body (else 408)")
    max_connections: int = Field(1000, ge=1, description="open connections at once; beyond that 503 and close")
    max_concurrent_requests: int = Field(256, ge=1, description="generation requests in flight at once")
    max_queued_requests: int = Field(256, ge=0, description="waiting beyond that before 429")
    request_timeout_s: float = Field(600, gt=0)
    stalled_send_grace_s: float = Field(
        5, gt=0, description="how long a stream past its deadline may wait on a client that stopped reading",
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0)
    shutdown_grace_s: float = Field(30, ge=0, description="drain time for in-flight requests on SIGTERM")
    log_prompts: bool = Field(False, description="include prompt and output text in access logs")
    playground: bool = Field(True, description="serve the browser playground at /playground (false: 404)")

    # --- content safety (docs/SAFETY.md)
    guard: Literal["off", "local", "remote"] = Field(
        "off", description="Llama Guard check: off, local (a second engine in this process) or remote (guard_url)"
    )
    guard_model: str | None = Field(None, description="local guard: model directory or hub id")
    guard_gpu_memory_utilization: float = Field(0.1, gt=0, le=1, description="local guard's GPU memory share")
    guard_max_model_len: int | None = Field(None, gt=0, description="local guard's context length")
    guard_cpu_kvcache_space_gib: int | None = Field(None, gt=0, description="local guard's KV space on CPU hosts")
    guard_url: str | None = Field(None, description="remote guard: base URL of a llamaserve serving Llama Guard")
    guard_api_key: SecretStr | None = Field(None, description="remote guard's API key")
    guard_check: Literal["prompt", "output", "both"] = Field("both", description="what the guard checks")
    guard_stream_interval_tokens: int = Field(32, ge=1, description="streams: tokens held back between checks")
    guard_timeout_s: float = Field(10, gt=0, description="one guard check's time limit")
    guard_max_checks_per_key: int = Field(
        4, ge=1, description="guard checks one API key (or client address) runs at once; its others wait their turn"
    )
    guard_on_error: Literal["open", "closed"] = Field(
        "open", description="guard down or slow: open passes (finish_reason content_filter_error), closed 503s"
    )
    guard_block_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["all"], description="categories that block (S1..S14 or names), comma-separated"
    )
    guard_key_categories: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per API key id (the access log's key_id): the categories that block, as JSON",
    )


    # --- LoRA adapters (fine-tunes of the base model); LoRA is on in the engine only if one is configured or
    # runtime loading is allowed, since it costs engine set-up (and torch.compile on CPU). See server/models/adapters.py.
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

    @field_validator("api_keys", "admin_api_keys", "guard_block_categories", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        """Blank entries are dropped; whether any key is left is checked at start (server/protection/security.py)."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            return [k.strip() if isinstance(k, str) else k for k in value if not (isinstance(k, str) and not k.strip())]
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

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        for entry in value if isinstance(value, list) else ():
            ipaddress.ip_network(str(entry), strict=False)  # ValueError names the bad entry
        return value

    @field_validator("guard_key_categories", mode="before")
    @classmethod
    def _json_map(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("guard_block_categories")
    @classmethod
    def _known_categories(cls, value: list[str]) -> list[str]:
        resolve_codes(value)  # raises on a category Llama Guard does not have
        return value

    @field_validator("guard_key_categories")
    @classmethod
    def _known_key_categories(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for names in value.values():
            resolve_codes(names)
        return value

    @model_validator(mode="after")
    def _guard_is_complete(self) -> Settings:
        if self.guard == "local" and not self.guard_model:
            raise ValueError("guard=local needs guard_model (a Llama Guard 3 directory or hub id)")
        if self.guard == "remote" and not self.guard_url:
            raise ValueError("guard=remote needs guard_url (the base URL of a llamaserve serving Llama Guard)")
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

    @property
    def engine(self) -> EngineSettings:
        return _group(EngineSettings, self)

    @property
    def api_limits(self) -> ApiLimits:
        return _group(ApiLimits, self)

    @property
    def protection(self) -> Protection:
        return _group(Protection, self)

    def keys_requested(self) -> bool:
        """Keys were asked for in some source, even if what was given holds none (an empty secret)."""
        return "api_keys" in self.model_fields_set or self.api_key_file is not None

    def all_api_keys(self) -> list[str]:
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_key_file is not None:
            keys += key_file_lines(self.api_key_file.read_bytes())
        return keys


@dataclass(frozen=True)
class ApiLimits:
    """What one request may ask for: the request checks between the route and the engine."""

    max_n: int
    max_best_of: int
    max_logprobs: int
    max_prompts_per_request: int
    max_sequences_per_request: int
    max_chat_messages: int
    max_prompt_chars: int


@dataclass(frozen=True)
class Protection:
    """What keeps one client, or too many, from taking the server down (the keys themselves: server/protection/security.py)."""

    # connections (server/protection/connections.py, uvicorn)
    header_timeout_s: float
    max_connections: int
    trusted_proxies: tuple[str, ...]
    # bodies (server/protection/limits.py BodyLimitMiddleware)
    max_request_bytes: int
    body_timeout_s: float
    # rates, admission and deadlines (server/protection/limits.py Limits)
    rate_limit_rpm: int
    rate_limit_tpm: int
    rate_limit_default_reserve_tokens: int
    max_concurrent_requests: int
    max_queued_requests: int
    request_timeout_s: float
    stalled_send_grace_s: float
    # the drain (server/protection/lifecycle.py, server/sse.py)
    shutdown_grace_s: float
    # whether /metrics needs a key (server/protection/security.py), and who sees the series naming adapters
    metrics_require_key: bool
    metrics_show_adapters: bool


def _group(group: type, settings: Settings) -> Any:
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(group)}
    return group(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def key_file_lines(raw: bytes) -> list[str]:
    """One key per line, or comma-separated as in `api_keys`; a UTF-8 BOM, surrounding whitespace, blank lines and
    `#` comment lines are not keys."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the API key file is not UTF-8 text") from None  # the bytes may be a secret: not shown
    lines = (line.strip() for line in text.splitlines())
    keys = (key.strip() for line in lines if not line.startswith("#") for key in line.split(","))
    return [key for key in keys if key]


# Their values are never echoed in an error, nor their mapping keys (lora_access accepts raw keys as its keys);
# nor is the value of an unknown key (it may be a misspelt secret). guard_url may hold `user:password@`.
SECRET_FIELDS = frozenset({"api_keys", "api_key_file", "admin_api_keys", "guard_api_key", "guard_url",
                           "lora_access", "guard_key_categories", "redis_url", "redis_url_file"})


def describe_error(exc: ValidationError) -> str:
    """A settings error for the operator, without any secret: pydantic's own text echoes every input."""
    lines = [f"{exc.error_count()} invalid setting(s)"]
    for err in exc.errors(include_url=False, include_context=False):
        secret = bool(err["loc"]) and err["loc"][0] in SECRET_FIELDS
        # Within a secret field, list positions help and mapping keys may be keys.
        shown = [part for i, part in enumerate(err["loc"]) if not secret or i == 0 or isinstance(part, int)]
        loc = ".".join(str(part) for part in shown) or "settings"
        line = f"{loc}: {err['msg']}"
        if err["loc"] and not secret and err["type"] != "extra_forbidden" and "input" in err:
            line += f" (got {str(err['input'])[:80]!r})"
        lines.append(line)
    return "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from every source; ``overrides`` are the command-line flags that were given."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

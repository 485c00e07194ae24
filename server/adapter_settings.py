"""Parsing and consistency rules of the LoRA settings (their fields live in server/settings.py, which calls these
rules from its validators: so this module reads the settings through `LoraSettings`, not by importing them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

# Adapter names become `model` values, metric labels and log fields: plain tokens only (hub-style `org/name` ok).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def check_name(name: str) -> None:
    if not ADAPTER_NAME.fullmatch(name):
        raise ValueError(
            f"adapter name {name!r} must be 1-128 characters of letters, digits and ._:/@+- (starting with a letter "
            "or digit)"
        )


def named_paths(value: Any) -> Any:
    """NAME=PATH pairs from a mapping (YAML), a list of pairs (repeated --lora) or a comma-separated string (env)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):  # a mapping as JSON (the Helm chart's env)
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"lora_adapters is not valid JSON: {exc}") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return value  # pydantic reports the wrong type
    pairs: dict[str, str] = {}
    for item in value:
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, sep, path = part.partition("=")
            name, path = name.strip(), path.strip()
            if not sep or not name or not path:
                raise ValueError(f"an adapter is NAME=PATH, got {part.strip()!r}")
            if name in pairs:
                raise ValueError(f"adapter {name!r} is named twice")
            pairs[name] = path
    return pairs


def access_map(value: Any) -> Any:
    """The allow-list from JSON text (flag, env) or a mapping (YAML); a bare string value is a one-name list."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f'lora_access must be JSON like {{"KEY_ID": ["adapter"]}}: {exc}') from None
    if isinstance(value, dict):
        return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
    return value


class LoraSettings(Protocol):
    """The settings the LoRA rules read."""

    served_model_name: str | None
    lora_adapters: dict[str, str]
    lora_access: dict[str, list[str]]
    allow_runtime_lora: bool
    admin_api_keys: list[SecretStr]
    api_keys: list[SecretStr]
    api_key_file: Path | None
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int | None


def check(settings: LoraSettings) -> None:
    if settings.max_lora_rank not in LORA_RANKS:
        raise ValueError(f"max_lora_rank must be one of {', '.join(map(str, LORA_RANKS))} (vLLM's kernel sizes)")
    for name in settings.lora_adapters:
        check_name(name)
        if name == settings.served_model_name:
            raise ValueError(f"adapter {name!r} has the base model's served name")
    for names in settings.lora_access.values():
        for name in names:
            check_name(name)
    if settings.max_cpu_loras is not None and settings.max_cpu_loras < settings.max_loras:
        raise ValueError(f"max_cpu_loras ({settings.max_cpu_loras}) must be at least max_loras ({settings.max_loras})")
    admin = {k.get_secret_value() for k in settings.admin_api_keys}
    if admin & {k.get_secret_value() for k in settings.api_keys}:
        raise ValueError("admin_api_keys and api_keys must be different keys")
    if settings.allow_runtime_lora and not admin and (settings.api_keys or settings.api_key_file is not None):
        # Open admin routes on a keyed server would let any caller load code-adjacent weights.
        raise ValueError("allow_runtime_lora on a server with api_keys needs admin_api_keys")


def lora_enabled(settings: LoraSettings) -> bool:
    """LoRA costs engine set-up (kernels, no torch.compile on CPU): only on when it can be used."""
    return bool(settings.lora_adapters) or settings.allow_runtime_lora

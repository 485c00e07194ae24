"""LoRA adapters as the API sees them: where an adapter's files come from, who may load one, who may call one.

- Sources: a local PEFT directory; a relative path, which resolves under $AZUREML_MODEL_DIR when that is set
  (Azure ML mounts registered models there); else a hub id (`org/name`), downloaded when the host can reach the hub.
- Admin routes authenticate here, with `admin_api_keys` only: API keys never open them.
- Access: `lora_access` maps a key (its id, the first 8 hex of its SHA-256, or the key itself) to the adapters it
  may call. A listed key calling another adapter gets the same 404 `model_not_found` as a name that does not exist,
  so a tenant cannot even learn that another tenant's fine-tune is there. Unlisted keys may call every adapter; the
  base model is open to every key.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from starlette.requests import Request

from engine.adapters import CONFIG_FILE, WEIGHTS_FILE, Adapter, AdapterExists, AdapterNotFound, InvalidAdapter
from engine.core import LlamaEngine
from engine.errors import EngineUnavailable
from server.errors import APIError
from server.models.model_source import AZUREML_MODEL_DIR
from server.observe.exchange import exchange_of
from server.protection.security import ADMIN_KEY_PREFIX, KeyRing, key_id, presented_keys
from server.settings import Settings

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def model_not_found(model: str, engine: LlamaEngine) -> APIError:
    return APIError(404, f"The model `{model}` does not exist; this server serves `{engine.info.name}`",
                    param="model", code="model_not_found")


# --- sources


async def resolve_source(source: str) -> Path:
    """The local directory of the adapter `source` names, downloading it from the hub if that is what it is."""
    path = Path(source).expanduser()
    if path.is_absolute():
        return path
    azure_dir = os.environ.get(AZUREML_MODEL_DIR)
    if azure_dir and (Path(azure_dir) / path).exists():
        return Path(azure_dir) / path
    if path.exists():
        return path.resolve()
    if _HUB_ID.fullmatch(source):
        return await asyncio.to_thread(_download, source)
    where = f" (nor under {AZUREML_MODEL_DIR}={azure_dir})" if azure_dir else ""
    raise AdapterNotFound(f"no adapter at {source}{where}")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    except Exception as exc:  # offline, unknown repo, no access: all mean there is no adapter to load
        raise AdapterNotFound(f"no adapter at {repo_id}: not a local path, and the hub gave no such repo ({exc})") from None


async def load(engine: LlamaEngine, name: str, source: str, replace: bool = False) -> Adapter:
    if name in (engine.info.name, engine.info.path):
        raise InvalidAdapter(f"{name!r} is the base model's name")
    path = await resolve_source(source)
    return await engine.load_adapter(name, str(path), source, replace)


async def load_configured(settings: Settings, engine: LlamaEngine) -> None:
    """The adapters named at start; one that does not load stops the start (a config error must not go unseen)."""
    for name, source in settings.lora_adapters.items():
        try:
            await load(engine, name, source)
        except (AdapterNotFound, InvalidAdapter) as exc:
            raise RuntimeError(f"LoRA adapter {name}={source}: {exc}") from exc


def adapter_error(exc: Exception) -> APIError:
    if isinstance(exc, AdapterNotFound):
        return APIError(404, str(exc), param="lora_name", code="adapter_not_found")
    if isinstance(exc, AdapterExists):
        return APIError(409, str(exc), param="lora_name", code="adapter_exists")
    if isinstance(exc, InvalidAdapter):
        return APIError(400, str(exc), param="lora_path", code="invalid_adapter")
    assert isinstance(exc, EngineUnavailable)
    return APIError(503, str(exc) or "the engine is not available", code="engine_unavailable",
                    headers={"Retry-After": "5"})


# --- who may do what


def require_admin(settings: Settings, request: Request) -> None:
    if not settings.allow_runtime_lora:
        raise APIError(404, "runtime adapter loading is off on this server (allow_runtime_lora)", code="not_found")
    admin = KeyRing([k.get_secret_value() for k in settings.admin_api_keys])
    if not admin:  # settings allow this only on a server without API keys, where every route is open
        return
    presented = presented_keys(request.headers)
    match = next((k for k in presented if admin.matches(k)), None)
    if match is not None:
        exchange_of(request).key_id = ADMIN_KEY_PREFIX + key_id(match)
        return
    if not presented:
        raise APIError(401, "Missing admin key: send `Authorization: Bearer <admin key>`", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    raise APIError(403, "this route needs an admin key (admin_api_keys); API keys do not open it",
                   code="admin_key_required")


def allowed_names(settings: Settings, caller: str | None) -> set[str] | None:
    """The adapters the caller's key may use; None: every one."""
    if caller is None or not settings.lora_access:
        return None
    names: set[str] | None = None
    for entry, listed in settings.lora_access.items():
        if entry == caller or key_id(entry) == caller:
            names = (names or set()) | set(listed)
    return names


def resolve(settings: Settings, caller: str | None, model: str | None, engine: LlamaEngine) -> Adapter | None:
    """The LoRA adapter a request's `model` names, None for the base model; one 404 for a name that is not served
    and for an adapter the caller's key may not use, so that neither tells the other apart."""
    if model is None or model in (engine.info.name, engine.info.path):
        return None
    adapter = engine.adapters.get(model)
    names = allowed_names(settings, caller)
    if adapter is None or (names is not None and model not in names):
        raise model_not_found(model, engine)
    return adapter


def visible(settings: Settings, caller: str | None, engine: LlamaEngine) -> list[Adapter]:
    names = allowed_names(settings, caller)
    return [a for a in engine.adapters.all() if names is None or a.name in names]


def model_card(adapter: Adapter, engine: LlamaEngine, *, show_root: bool) -> dict:
    """Like vLLM's: `parent` is the base model's id; `root` where the weights came from, for admins only (a
    filesystem path or hub id tells a tenant about the host and the fine-tune)."""
    card = {"id": adapter.name, "object": "model", "created": adapter.created, "owned_by": engine.info.provider.lower(),
            "parent": engine.info.name, "max_model_len": engine.info.max_model_len}
    if show_root:
        card["root"] = adapter.source
    return card


def all_names(settings: Settings, engine: LlamaEngine | None) -> set[str]:
    """Every adapter name the server knows: loaded (once the engine is), configured, or named in an allow-list."""
    names = set(settings.lora_adapters) | ({a.name for a in engine.adapters.all()} if engine is not None else set())
    for listed in settings.lora_access.values():
        names.update(listed)
    return names

"""Where the guard runs. Both kinds answer `classify(turns) -> raw verdict text` and `close()`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

import httpx

from server.model_source import under_azure_dir

if TYPE_CHECKING:
    from engine.core import EngineOptions
    from server.settings import Settings


class Guard(Protocol):
    async def classify(self, turns: list[dict[str, str]]) -> str: ...

    async def close(self) -> None: ...


class GuardUnavailable(Exception):
    """The guard could not give a verdict (down, refused, malformed reply)."""


class RemoteGuard:
    """A llamaserve deployment serving Llama Guard: its chat route renders the guard prompt with the guard
    model's own template, so this side sends the conversation only."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    async def classify(self, turns: list[dict[str, str]]) -> str:
        body = {"messages": turns, "max_tokens": 48, "temperature": 0}
        try:
            reply = await self._client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise GuardUnavailable(f"the guard at {self._client.base_url} is unreachable: {type(exc).__name__}") from exc
        if reply.status_code != 200:
            raise GuardUnavailable(f"the guard answered HTTP {reply.status_code}")
        try:
            return reply.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GuardUnavailable("the guard's reply is not a chat completion") from exc

    async def close(self) -> None:
        await self._client.aclose()


def local_guard_options(settings: Settings, main: EngineOptions) -> EngineOptions:
    """The guard engine's options: its own model, memory share and context; dtype and eager mode as the main
    engine's; one GPU (a guard model is small)."""
    assert settings.guard_model  # Settings require it with guard=local
    return dataclasses.replace(
        main,
        model=under_azure_dir(settings.guard_model),
        served_model_name="llama-guard",
        max_model_len=settings.guard_max_model_len,
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        gpu_memory_utilization=settings.guard_gpu_memory_utilization,
        quantization=None,
        max_num_seqs=None,
        chat_template=None,
        distributed_executor_backend=None,
        cpu_kvcache_space_gib=settings.guard_cpu_kvcache_space_gib or main.cpu_kvcache_space_gib,
        max_logprobs=0,
        enable_lora=False,  # adapters are the served model's, never the guard's
    )


def start_guard(settings: Settings, main: EngineOptions) -> Guard | None:
    """The configured guard, started (blocking: a local guard loads a model); None when the guard is off."""
    if settings.guard == "off":
        return None
    if settings.guard == "remote":
        assert settings.guard_url  # Settings require it with guard=remote
        key = settings.guard_api_key.get_secret_value() if settings.guard_api_key else None
        return RemoteGuard(settings.guard_url, key, settings.guard_timeout_s)
    from engine.guard import GuardEngine

    return GuardEngine.start_guard(local_guard_options(settings, main))


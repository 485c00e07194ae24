"""Where the guard runs. Both kinds answer `classify(turns) -> GuardReply` (raw verdict text and the tokens the
check cost), `fit()` (what the guard can read, when known) and `close()`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

import httpx

from engine.guard_format import GuardFit, GuardReply
from server.models.model_source import under_azure_dir
from server.observe import tracing

if TYPE_CHECKING:
    from engine.core import EngineOptions
    from server.settings import Settings


class Guard(Protocol):
    async def classify(self, turns: list[dict[str, str]]) -> GuardReply: ...

    async def fit(self) -> GuardFit | None: ...

    async def close(self) -> None: ...


class GuardUnavailable(Exception):
    """The guard service could not give a verdict (down, overloaded, malformed reply)."""


class GuardRefused(Exception):
    """The guard could not judge this input (too long for it, a conversation it rejects): the request's doing."""


# A guard deployment's answers that mean "not this input"; any other failure is the guard service's.
_REFUSING_STATUSES = frozenset({400, 413, 422})


class RemoteGuard:
    """A llamaserve deployment serving Llama Guard: its chat route renders the guard prompt with the guard
    model's own template, so this side sends the conversation only."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base_url, auth = without_credentials(url)
        self._client = httpx.AsyncClient(base_url=base_url, auth=auth, headers=headers, timeout=timeout_s)

    async def classify(self, turns: list[dict[str, str]]) -> GuardReply:
        body = {"messages": turns, "max_tokens": 48, "temperature": 0}
        try:
            # The check's trace context: a traced guard server's span joins the request's trace under this check.
            reply = await self._client.post("/v1/chat/completions", json=body, headers=tracing.carrier())
        except httpx.HTTPError as exc:
            raise GuardUnavailable(f"the guard at {self._client.base_url} is unreachable: {type(exc).__name__}") from exc
        if reply.status_code in _REFUSING_STATUSES:
            raise GuardRefused(f"the guard refused the conversation (HTTP {reply.status_code}: {_reason(reply)})")
        if reply.status_code != 200:
            raise GuardUnavailable(f"the guard answered HTTP {reply.status_code}")
        try:
            answer = reply.json()
            text = answer["choices"][0]["message"]["content"] or ""
            tokens = int((answer.get("usage") or {}).get("total_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GuardUnavailable("the guard's reply is not a chat completion") from exc
        return GuardReply(text, tokens)

    async def fit(self) -> GuardFit | None:
        return None  # another deployment's context: a conversation too long for it is answered 400, a refusal

    async def close(self) -> None:
        await self._client.aclose()


def _reason(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]


def without_credentials(url: str) -> tuple[httpx.URL, httpx.BasicAuth | None]:
    """The guard's URL with any `user:password@` taken out into Basic auth: messages and httpx's request log name
    the URL, and must never carry the password."""
    try:
        parsed = httpx.URL(url.rstrip("/"))
    except httpx.InvalidURL:
        raise ValueError("guard_url is not a valid URL") from None  # the text may hold a password: not shown
    if not parsed.userinfo:
        return parsed, None
    return parsed.copy_with(userinfo=b""), httpx.BasicAuth(parsed.username, parsed.password)


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
        max_num_batched_tokens=None,
        long_prefill_token_threshold=None,
        # The main model's draft model and vLLM arguments (its load format, its tokenizer...) are not the guard's.
        speculative_config=None,
        engine_args={},
        # Its checks are spans of llamaserve's own (server/safety/moderation.py), not vLLM's.
        otlp_traces_endpoint=None,
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


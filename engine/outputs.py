"""Engine results in plain terms the server can render: no vLLM types leave the engine package."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    token: str
    token_id: int
    logprob: float | None  # None only for a prompt's first token, which nothing precedes
    # The k most likely alternatives at this position, most likely first: (token text, logprob, token bytes).
    top: list[tuple[str, float, bytes]]
    # What the token stands for (engine/token_bytes.py): a fragment of a UTF-8 character has no text of its own.
    token_bytes: bytes | None = None


@dataclass(slots=True)
class ChoiceDelta:
    """New output of one choice since its previous delta (or all of it, for a finished non-streamed choice)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None
    cumulative_logprob: float | None = None


@dataclass(slots=True)
class PromptInfo:
    token_ids: list[int]
    # Logprobs of the prompt tokens; only when asked for with echo.
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Step:
    """One engine step of one request: the choices that moved, and token counts so far."""

    choices: list[ChoiceDelta]
    prompt: PromptInfo
    completion_tokens: int = 0
    finished: bool = False
    extra: dict = field(default_factory=dict)
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache held (no prefill spent on them)

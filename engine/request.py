"""What the engine is asked to generate: its own input type, fully resolved, so that no API name reaches the engine.

The server's gate (server/pipeline/validation.py) builds it from an API request, applying every default once; the engine
maps it to vLLM's parameters (engine/sampling.py) without resolving anything further.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.adapters import Adapter


class Mode(enum.Enum):
    sample = "sample"  # n independent samples, all returned
    best_of = "best_of"  # `candidates` samples, the n best by mean token logprob returned
    beam = "beam"  # beam search of width `candidates`, the n best beams returned


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """The shape the output must take: an xgrammar EBNF grammar of strict JSON (engine/grammar.py), whether for
    response_format or a forced tool call."""

    grammar: str


@dataclass(frozen=True, slots=True)
class BeamParameters:
    width: int
    # Beams are ranked by cumulative logprob / length ** length_penalty (Hugging Face's normalisation).
    length_penalty: float
    early_stopping: bool  # stop once `width` beams have finished


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationInput:
    """One generation, per prompt: every field resolved (no None meaning "the default")."""

    mode: Mode
    n: int  # choices returned
    candidates: int  # sequences generated: n, best_of, or the beam width
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int  # 0: off
    min_p: float
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    min_tokens: int
    ignore_eos: bool
    skip_special_tokens: bool
    seed: int | None = None  # None: random
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logit_bias: Mapping[int, float] | None = None
    structured_output: StructuredOutput | None = None
    logprobs: int | None = None  # top-k alternatives per generated token; None: no logprobs
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo)
    # Further vLLM sampling fields, already type-checked (the `extra-parameters: pass-through` header).
    pass_through: Mapping[str, Any] = field(default_factory=dict)
    adapter: Adapter | None = None  # the LoRA adapter to generate with; None: the base model
    beam: BeamParameters | None = None  # set exactly when mode is beam
    # W3C trace context (traceparent, tracestate) the engine's own span joins; None: the request is not traced.
    trace_headers: Mapping[str, str] | None = None

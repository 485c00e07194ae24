"""Beam search on top of the engine's one-token steps (vLLM's V1 engine has no native beam search).

Each step asks the engine for one token per live beam with 2 x width alternatives; prefix caching makes the
re-sent prefixes cheap. A beam finishes at any token of `stop_ids` (the caller's choice: the model's EOS tokens
unless ignore_eos, plus the request's stop_token_ids).
Scores are length-normalised as in Hugging Face: cumulative logprob / length ** length_penalty.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import SamplingParams


@dataclass(slots=True)
class Beam:
    tokens: list[int] = field(default_factory=list)
    # Per generated token: the engine's alternatives at that step ({token_id: Logprob}).
    steps: list[dict[int, Any]] = field(default_factory=list)
    cum_logprob: float = 0.0
    finish_reason: str = "length"

    def score(self, length_penalty: float) -> float:
        return self.cum_logprob / (max(len(self.tokens), 1) ** length_penalty)


Generate = Callable[[list[int], SamplingParams, str], AsyncIterator[Any]]


async def beam_search(
    generate: Generate,
    prompt_ids: list[int],
    step_params: SamplingParams,
    *,
    width: int,
    max_tokens: int,
    stop_ids: set[int],
    length_penalty: float,
    early_stopping: bool,
    request_id: str,
) -> list[Beam]:
    """All finished beams, best first."""
    live = [Beam()]
    done: list[Beam] = []
    for step in range(max_tokens):
        results = await asyncio.gather(
            *(_one_step(generate, prompt_ids + b.tokens, step_params, f"{request_id}-s{step}-b{i}") for i, b in enumerate(live))
        )
        candidates: list[Beam] = []
        for beam, alternatives in zip(live, results):
            for token_id, lp in alternatives.items():
                grown = Beam(beam.tokens + [token_id], beam.steps + [alternatives], beam.cum_logprob + lp.logprob)
                if token_id in stop_ids:
                    grown.finish_reason = "stop"
                    done.append(grown)
                else:
                    candidates.append(grown)
        candidates.sort(key=lambda b: b.cum_logprob, reverse=True)
        live = candidates[:width]
        if not live or (early_stopping and len(done) >= width):
            break
    done.extend(live)
    done.sort(key=lambda b: b.score(length_penalty), reverse=True)
    return done


async def _one_step(generate: Generate, tokens: list[int], params: SamplingParams, request_id: str) -> dict[int, Any]:
    final = None
    async for out in generate(tokens, params, request_id):
        final = out
    assert final is not None
    logprobs = final.outputs[0].logprobs
    return dict(logprobs[0]) if logprobs else {}

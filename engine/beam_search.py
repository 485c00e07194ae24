"""Beam search on top of the engine's one-token steps (vLLM's V1 engine has no native beam search).

Each step asks for the next token's alternatives (2 x width of them) after every live beam, all beams of the step
in one call (`Step`, engine.beam_steps). A beam finishes at any token of `stop_ids` (the caller's choice: the
model's EOS tokens unless ignore_eos, plus the request's stop_token_ids).
Scores are length-normalised as in Hugging Face: cumulative logprob / length ** length_penalty.

Only the width survivors of a step become beams; the 2 x width^2 candidates are plain tuples, so a step costs
O(width^2) small tuples plus O(width x length) for the survivors' token lists, not a Beam and two list copies per
candidate.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace


@dataclass(slots=True)
class Beam:
    tokens: list[int] = field(default_factory=list)
    # Per generated token: the engine's alternatives at that step ({token_id: Logprob}).
    steps: list[dict[int, Any]] = field(default_factory=list)
    cum_logprob: float = 0.0
    finish_reason: str = "length"

    def score(self, length_penalty: float) -> float:
        return self.cum_logprob / (max(len(self.tokens), 1) ** length_penalty)


# The generated tokens of each live beam -> for each, the next token's alternatives ({token_id: has .logprob}).
Step = Callable[[list[list[int]]], Awaitable[list[dict[int, Any]]]]


async def beam_search(
    step: Step,
    *,
    width: int,
    max_tokens: int,
    stop_ids: set[int] | frozenset[int],
    length_penalty: float,
    early_stopping: bool,
) -> list[Beam]:
    """All finished beams, best first.

    Ties keep order: candidates rank by cumulative logprob, equal ones in beam order, then in the order the engine
    listed the alternatives; finished beams rank by score, equal ones in the order they finished.
    """
    live = [Beam()]
    done: list[Beam] = []
    span = trace.get_current_span()  # the request's, when it is traced: one event per step
    for step_no in range(max_tokens):
        results = await step([b.tokens for b in live])
        candidates: list[tuple[float, int, int, dict[int, Any]]] = []
        for i, (beam, alternatives) in enumerate(zip(live, results)):
            base = beam.cum_logprob
            for token_id, lp in alternatives.items():
                if token_id in stop_ids:
                    done.append(Beam(beam.tokens + [token_id], beam.steps + [alternatives], base + lp.logprob, "stop"))
                else:
                    candidates.append((base + lp.logprob, i, token_id, alternatives))
        # nlargest is stable (as sorted(..., reverse=True)[:width]), so equal scores keep candidate order.
        best = heapq.nlargest(width, candidates, key=_cum)
        live = [Beam(live[i].tokens + [t], live[i].steps + [alts], cum) for cum, i, t, alts in best]
        if span.is_recording():
            span.add_event("beam_step", {"beam.step": step_no + 1, "beam.live": len(live), "beam.finished": len(done),
                                         "beam.best_cumulative_logprob": live[0].cum_logprob if live else 0.0})
        if not live or (early_stopping and len(done) >= width):
            break
    done.extend(live)
    done.sort(key=lambda b: b.score(length_penalty), reverse=True)
    return done


def _cum(candidate: tuple[float, int, int, dict[int, Any]]) -> float:
    return candidate[0]

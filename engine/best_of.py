"""best_of ranking: of the candidates generated, keep the n with the highest mean log probability per token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):  # engine.outputs.ChoiceDelta, or the engine's own CompletionOutput before conversion
    index: int
    cumulative_logprob: float | None

    @property
    def token_ids(self) -> Sequence[int]: ...


C = TypeVar("C", bound=Candidate)


def mean_logprob(choice: Candidate) -> float:
    if not choice.token_ids or choice.cumulative_logprob is None:
        return float("-inf")
    return choice.cumulative_logprob / len(choice.token_ids)


def pick(candidates: Sequence[C], n: int) -> list[C]:
    """The n best, best first, re-indexed 0..n-1 (ties keep generation order)."""
    ranked = sorted(candidates, key=mean_logprob, reverse=True)[:n]
    for index, choice in enumerate(ranked):
        choice.index = index
    return ranked

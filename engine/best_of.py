"""best_of ranking: of the candidates generated, keep the n with the highest mean log probability per token."""

from __future__ import annotations

from engine.outputs import ChoiceDelta


def mean_logprob(choice: ChoiceDelta) -> float:
    if not choice.token_ids or choice.cumulative_logprob is None:
        return float("-inf")
    return choice.cumulative_logprob / len(choice.token_ids)


def pick(candidates: list[ChoiceDelta], n: int) -> list[ChoiceDelta]:
    """The n best, best first, re-indexed 0..n-1 (ties keep generation order)."""
    ranked = sorted(candidates, key=mean_logprob, reverse=True)[:n]
    for index, choice in enumerate(ranked):
        choice.index = index
    return ranked

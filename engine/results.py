"""vLLM's outputs as `engine.outputs` objects: a completion's choice, and the logprobs of its tokens and prompt.

Token texts are vLLM's decoded ones; token bytes come from the tokenizer's pieces (engine/token_bytes.py).
"""

from __future__ import annotations

from typing import Any

from vllm.outputs import CompletionOutput, RequestOutput

from engine import outputs
from engine.token_bytes import TokenBytes


def choice(c: CompletionOutput, tokenizer: Any, token_bytes: TokenBytes) -> outputs.ChoiceDelta:
    text = c.text
    if isinstance(c.stop_reason, int):
        # The contract keeps a stop_token_ids token in the text unless it is special; vLLM drops it.
        text += tokenizer.decode([c.stop_reason], skip_special_tokens=True)
    return outputs.ChoiceDelta(
        index=c.index,
        text=text,
        token_ids=list(c.token_ids),
        logprobs=None if c.logprobs is None
        else [token_logprob(tid, lp, tokenizer, token_bytes) for tid, lp in zip(c.token_ids, c.logprobs)],
        finish_reason=c.finish_reason,
        cumulative_logprob=c.cumulative_logprob,
    )


def token_logprob(token_id: int, candidates: dict, tokenizer: Any, token_bytes: TokenBytes,
                   k: int | None = None) -> outputs.TokenLogprob:
    chosen = candidates[token_id]
    # vLLM keeps the top k plus the sampled token; rank orders them (the sampled one may rank below k).
    ranked = sorted(candidates.items(), key=lambda item: item[1].rank or 0)
    if k is not None:  # candidates hold more than the client asked for (beam search)
        ranked = [(t, lp) for i, (t, lp) in enumerate(ranked) if i < k or t == token_id]
    return outputs.TokenLogprob(
        token=_token_text(token_id, chosen, tokenizer),
        token_id=token_id,
        logprob=chosen.logprob,
        top=[(_token_text(tid, lp, tokenizer), lp.logprob, token_bytes(tid)) for tid, lp in ranked],
        token_bytes=token_bytes(token_id),
    )


def _token_text(token_id: int, lp: Any, tokenizer: Any) -> str:
    if lp.decoded_token is not None:
        return lp.decoded_token
    return tokenizer.decode([token_id])


def prompt_logprobs(out: RequestOutput, tokenizer: Any, token_bytes: TokenBytes) -> list[outputs.TokenLogprob] | None:
    if out.prompt_logprobs is None:
        return None
    return [
        outputs.TokenLogprob(tokenizer.decode([tid]), tid, None, [], token_bytes(tid))
        if candidates is None
        else token_logprob(tid, candidates, tokenizer, token_bytes)
        for tid, candidates in zip(out.prompt_token_ids or [], out.prompt_logprobs)
    ]

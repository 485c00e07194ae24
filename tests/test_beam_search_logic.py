"""Beam search's bookkeeping, on scripted one-token steps (the real engine runs it in test_params_best_of_beam)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from engine.beam_search import beam_search

STOP = 9
# At every step: the stop token is likeliest, then 1, 2, 3.
ALTERNATIVES = {STOP: -0.1, 1: -1.0, 2: -1.2, 3: -3.0}


def scripted():
    calls = []

    async def generate(tokens, params, request_id):
        calls.append(list(tokens))
        logprobs = {t: SimpleNamespace(logprob=lp) for t, lp in ALTERNATIVES.items()}
        yield SimpleNamespace(outputs=[SimpleNamespace(logprobs=[logprobs])])

    return generate, calls


def run(**options):
    generate, calls = scripted()
    beams = asyncio.run(beam_search(generate, [100], None, width=1, max_tokens=4, stop_ids={STOP},
                                    request_id="r", **options))
    return beams, calls


def test_early_stopping_ends_once_width_beams_are_done():
    beams, calls = run(length_penalty=1.0, early_stopping=True)
    assert len(calls) == 1
    assert beams[0].tokens == [STOP] and beams[0].finish_reason == "stop"


def test_without_early_stopping_the_search_runs_to_max_tokens():
    beams, calls = run(length_penalty=1.0, early_stopping=False)
    assert len(calls) == 4
    assert calls[1] == [100, 1]  # the live beam grew by the best non-stop token
    assert {b.finish_reason for b in beams} == {"stop", "length"}


def test_length_penalty_decides_between_short_and_long_beams():
    # [9] scores -0.1; [1, 1, 1, 1] has cum -4.0: length_penalty 0 prefers the short beam; a large one the long.
    short_first, _ = run(length_penalty=0.0, early_stopping=False)
    assert short_first[0].tokens == [STOP]
    long_first, _ = run(length_penalty=4.0, early_stopping=False)
    assert len(long_first[0].tokens) > 1

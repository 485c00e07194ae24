"""Beam search's bookkeeping on scripted steps (no engine); the real engine runs it in test_beam_reference and
test_params_best_of_beam."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from engine.beam_search import beam_search

STOP = 9
# At every step: the stop token is likeliest, then 1, 2, 3.
ALTERNATIVES = {STOP: -0.1, 1: -1.0, 2: -1.2, 3: -3.0}


def lp(value: float) -> SimpleNamespace:
    return SimpleNamespace(logprob=value)


def scripted(alternatives=lambda tokens: ALTERNATIVES):
    calls: list[list[list[int]]] = []

    async def step(generated):
        calls.append([list(g) for g in generated])
        return [{t: lp(v) for t, v in alternatives(g).items()} for g in generated]

    return step, calls


def run(width=1, max_tokens=4, step=None, **options):
    step, calls = step or scripted()
    beams = asyncio.run(beam_search(step, width=width, max_tokens=max_tokens, stop_ids={STOP}, **options))
    return beams, calls


def test_early_stopping_ends_once_width_beams_are_done():
    beams, calls = run(length_penalty=1.0, early_stopping=True)
    assert len(calls) == 1
    assert beams[0].tokens == [STOP] and beams[0].finish_reason == "stop"


def test_without_early_stopping_the_search_runs_to_max_tokens():
    beams, calls = run(length_penalty=1.0, early_stopping=False)
    assert len(calls) == 4
    assert calls[1] == [[1]]  # the live beam grew by the best non-stop token
    assert {b.finish_reason for b in beams} == {"stop", "length"}


def test_length_penalty_decides_between_short_and_long_beams():
    # [9] scores -0.1; [1, 1, 1, 1] has cum -4.0: length_penalty 0 prefers the short beam; a large one the long.
    short_first, _ = run(length_penalty=0.0, early_stopping=False)
    assert short_first[0].tokens == [STOP]
    long_first, _ = run(length_penalty=4.0, early_stopping=False)
    assert len(long_first[0].tokens) > 1


def test_a_step_asks_for_every_live_beam_at_once_and_keeps_the_width_best():
    beams, calls = run(width=2, max_tokens=3, length_penalty=1.0, early_stopping=False)
    assert [len(c) for c in calls] == [1, 2, 2]  # one call per step, all live beams in it
    assert calls[1] == [[1], [2]]  # the two best non-stop candidates of step 0, best first
    assert calls[2] == [[1, 1], [1, 2]]  # [1, 1] -2.0 and [1, 2] -2.2 beat [2, 1] -2.2 (later) and [2, 2] -2.4
    live = [b for b in beams if b.finish_reason == "length"]
    assert [b.tokens for b in live] == [[1, 1, 1], [1, 1, 2]]
    assert live[0].cum_logprob == -3.0 and len(live[0].steps) == 3


def test_equal_scores_keep_beam_then_alternative_order():
    # Every alternative is equally likely: the first beam's alternatives in the engine's order win.
    flat = {5: -1.0, 4: -1.0, 6: -1.0}
    beams, calls = run(width=2, max_tokens=2, step=scripted(lambda g: flat), length_penalty=1.0,
                       early_stopping=False)
    assert calls[1] == [[5], [4]]
    assert [b.tokens for b in beams] == [[5, 5], [5, 4]]


def test_a_beam_with_no_alternatives_ends_the_search_when_none_is_left():
    beams, calls = run(width=2, step=scripted(lambda g: {}), length_penalty=1.0, early_stopping=False)
    assert len(calls) == 1 and beams == []


def test_each_step_is_an_event_of_the_traced_request():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("request"):
        beams, calls = run(width=2, max_tokens=3, length_penalty=1.0, early_stopping=False)
    [span] = exporter.get_finished_spans()
    events = [e for e in span.events if e.name == "beam_step"]
    assert [e.attributes["beam.step"] for e in events] == [1, 2, 3] == list(range(1, len(calls) + 1))
    assert all(e.attributes["beam.live"] == 2 for e in events)
    # The stop token ends one beam at the first step (one live beam), then two at each later one.
    assert [e.attributes["beam.finished"] for e in events] == [1, 3, 5]
    assert events[-1].attributes["beam.best_cumulative_logprob"] == max(b.cum_logprob for b in beams
                                                                        if b.finish_reason != "stop")


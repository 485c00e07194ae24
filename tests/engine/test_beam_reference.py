"""The fast beam search (engine.beam_steps + engine.beam_search) against a plain, obviously-correct one.

Both run on the same real engine (in this process, tiny model). The reference asks the engine for one token at a
time, one beam at a time, with a fresh request per beam and step, and keeps every candidate as a full sequence;
the fast one lets requests run ahead greedily, reuses them, copies validated requests and runs searches
concurrently. Their beams must agree token for token.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from vllm.inputs.engine import tokens_input
from vllm.sampling_params import RequestOutputKind, SamplingParams

from engine.beam_search import beam_search
from engine.beam_steps import EngineSteps
from engine.core import EngineOptions, LlamaEngine
from server.models.model_source import TINY_MODEL_ENGINE_DEFAULTS

pytestmark = pytest.mark.engine

PROMPTS = ["Hello world", "The llama walked up the hill and", "Once upon a time, in the mountains,"]
_ids = itertools.count()


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    # The engine's output handler task lives on this loop: let it end before the loop closes.
    pending = asyncio.all_tasks(lp)
    for task in pending:
        task.cancel()
    lp.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    lp.close()


@pytest.fixture(scope="module")
def engine(tiny_model: Path, loop):
    # float32: the searches compare logprobs computed in different batches (a prefill here, a decode step there);
    # bfloat16's rounding differs between those by more than the gaps between the random model's near-tied beams.
    options = {**TINY_MODEL_ENGINE_DEFAULTS, "dtype": "float32"}
    eng = LlamaEngine.start(EngineOptions(model=str(tiny_model), served_model_name="tiny", max_logprobs=32, **options))
    yield eng
    eng.shutdown()


async def reference(engine: LlamaEngine, prompt: list[int], *, width, max_tokens, stop_ids, length_penalty,
                    early_stopping) -> list[tuple[list[int], float, str]]:
    """Textbook beam search: (tokens, cumulative logprob, finish reason), best first."""
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=2 * width, detokenize=False)

    async def alternatives(tokens: list[int]) -> dict:
        final = None
        async for out in engine._llm.generate(tokens_input(prompt + tokens), params, f"ref-{next(_ids)}"):
            final = out
        return final.outputs[0].logprobs[0]

    live: list[tuple[list[int], float]] = [([], 0.0)]
    done: list[tuple[list[int], float, str]] = []
    for _ in range(max_tokens):
        candidates = []
        for tokens, cum in live:
            for token, lp in (await alternatives(tokens)).items():
                if token in stop_ids:
                    done.append((tokens + [token], cum + lp.logprob, "stop"))
                else:
                    candidates.append((tokens + [token], cum + lp.logprob))
        candidates.sort(key=lambda c: c[1], reverse=True)
        live = candidates[:width]
        if not live or (early_stopping and len(done) >= width):
            break
    done.extend((tokens, cum, "length") for tokens, cum in live)
    done.sort(key=lambda b: b[1] / max(len(b[0]), 1) ** length_penalty, reverse=True)
    return done


async def fast(engine: LlamaEngine, prompt: list[int], *, lookahead=None, **options):
    width = options["width"]

    def params_for(tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=tokens, temperature=0.0, logprobs=2 * width, detokenize=False,
                              ignore_eos=True, output_kind=RequestOutputKind.DELTA)

    extra = {} if lookahead is None else {"lookahead": lookahead}
    steps = EngineSteps(engine._llm, prompt, params_for, request_id=f"fast-{next(_ids)}",
                        max_tokens=options["max_tokens"], **extra)
    try:
        beams = await beam_search(steps, **options)
    finally:
        await steps.close()
    return [(b.tokens, b.cum_logprob, b.finish_reason) for b in beams]


def assert_same(got, want):
    assert [b[0] for b in got] == [b[0] for b in want]
    assert [b[2] for b in got] == [b[2] for b in want]
    assert [b[1] for b in got] == pytest.approx([b[1] for b in want], abs=1e-5)


def cases(prompts: list[list[int]], stop_ids: set[int]):
    # Widths and lengths crossed with the options that change which beams finish and how they rank.
    for width, max_tokens in [(1, 6), (2, 12), (3, 5), (4, 16), (8, 10)]:
        for i, (length_penalty, early_stopping, stops) in enumerate(
            [(1.0, False, set()), (0.0, True, stop_ids), (2.0, False, stop_ids)]
        ):
            yield prompts[(width + i) % len(prompts)], dict(width=width, max_tokens=max_tokens, stop_ids=stops,
                                                            length_penalty=length_penalty,
                                                            early_stopping=early_stopping)


def test_fast_beam_search_equals_the_reference(engine, loop):
    async def go():
        prompts = [await engine.encode_text(p) for p in PROMPTS]
        # Stop tokens the search meets: the likeliest first tokens of each prompt.
        first = [await reference(engine, p, width=1, max_tokens=1, stop_ids=set(), length_penalty=1.0,
                                 early_stopping=False) for p in prompts]
        stop_ids = {b[0][0][0] for b in first}
        plan = list(cases(prompts, stop_ids))
        # Each reference search runs step by step; the searches run side by side (the engine batches their steps).
        want = await asyncio.gather(*(reference(engine, p, **o) for p, o in plan))
        # Concurrently, as the server runs them: steps of several searches share the engine's batches.
        got = await asyncio.gather(*(fast(engine, p, **o) for p, o in plan))
        assert any(b[2] == "stop" for beams in want for b in beams)  # stop tokens were met
        for (p, o), g, w in zip(plan, got, want):
            assert_same(g, w)
        # Without running ahead (one fresh request per beam and step), and running ahead the whole length.
        for variant in ({"lookahead": 1}, {"lookahead": 64}):
            got = await asyncio.gather(*(fast(engine, p, **variant, **o) for p, o in plan))
            for g, w in zip(got, want):
                assert_same(g, w)

    loop.run_until_complete(go())


def test_requests_are_finished_or_aborted_when_a_search_ends(engine, loop):
    async def go():
        prompt = await engine.encode_text(PROMPTS[1])
        for early_stopping in (True, False):
            await fast(engine, prompt, width=4, max_tokens=20, stop_ids=set(prompt), length_penalty=1.0,
                       early_stopping=early_stopping)
        await asyncio.sleep(0.2)
        assert engine.num_unfinished_requests() == 0

        # A cancelled search (the client went away) aborts what it had running.
        task = asyncio.ensure_future(fast(engine, prompt, width=4, max_tokens=200, stop_ids=set(),
                                          length_penalty=1.0, early_stopping=False))
        await asyncio.sleep(0.3)
        assert engine.num_unfinished_requests() > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        assert engine.num_unfinished_requests() == 0

    loop.run_until_complete(go())

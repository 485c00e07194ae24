"""engine.beam_steps on a scripted engine (no vLLM engine): which requests it starts, reuses and aborts, and that
the search's beams are those of plain one-token steps. The real engine: tests/engine/test_beam_reference.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine import EngineCoreRequest

from engine.beam_search import beam_search
from engine.beam_steps import EngineSteps

PROMPT = [3, 1, 4]


def alternatives(seq: list[int]) -> dict[int, SimpleNamespace]:
    """A deterministic 'model': four alternatives after any sequence, likeliest first, values varying with it."""
    h = sum((i + 1) * t for i, t in enumerate(seq))
    tokens = [(h * k + 7 * k) % 97 for k in (1, 2, 3, 5)]
    out: dict[int, SimpleNamespace] = {}
    for rank, t in enumerate(dict.fromkeys(tokens)):
        out[t] = SimpleNamespace(logprob=-0.3 * (rank + 1) - (h % 11) / 50)
    return out


class ScriptedLLM:
    """The parts of vLLM's AsyncLLM that EngineSteps uses; each request generates greedily from `alternatives`."""

    errored = False

    def __init__(self):
        self.started: list[EngineCoreRequest] = []
        self.aborted: set[str] = set()
        self.exhausted: set[str] = set()
        self.input_processor = SimpleNamespace(process_inputs=self._process)

    def _process(self, request_id, prompt, params, supported_tasks, trace_headers=None):
        return EngineCoreRequest(request_id=request_id, prompt_token_ids=list(prompt["prompt_token_ids"]),
                                 mm_features=None, sampling_params=params, pooling_params=None, arrival_time=0.0,
                                 lora_request=None, cache_salt=None, data_parallel_rank=None,
                                 trace_headers=trace_headers)

    async def get_supported_tasks(self):
        return ("generate",)

    async def add_request(self, request_id, request, params):
        self.started.append(request)
        return _Collector(self, request_id, list(request.prompt_token_ids), params.max_tokens)

    async def abort(self, request_ids):
        self.aborted.update(request_ids)

    def get_num_unfinished_requests(self) -> int:
        return len(self.started) - len(self.aborted) - len(self.exhausted)


class _Collector:
    def __init__(self, llm, request_id, seq, max_tokens):
        self.llm, self.request_id, self.seq, self.left = llm, request_id, seq, max_tokens

    async def get(self):
        """Two tokens at a time where it can, as vLLM merges deltas while the consumer is behind the engine."""
        await asyncio.sleep(0)
        tokens, logprobs = [], []
        for _ in range(min(2, self.left)):
            alts = alternatives(self.seq)
            tokens.append(next(iter(alts)))
            logprobs.append(alts)
            self.seq.append(tokens[-1])
        self.left -= len(tokens)
        if self.left == 0:
            self.llm.exhausted.add(self.request_id)
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, logprobs=logprobs)])


def params_for(tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, temperature=0.0, logprobs=4, detokenize=False, ignore_eos=True,
                          output_kind=RequestOutputKind.DELTA)


async def plain_step(generated):
    return [alternatives(PROMPT + g) for g in generated]


def search(step, width, max_tokens):
    return beam_search(step, width=width, max_tokens=max_tokens, stop_ids={0}, length_penalty=1.0,
                       early_stopping=False)


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("lookahead", [1, 4, 50])
def test_same_beams_as_one_token_steps_and_nothing_left_running(width, lookahead):
    async def go():
        llm = ScriptedLLM()
        steps = EngineSteps(llm, PROMPT, params_for, request_id="r", max_tokens=12, lookahead=lookahead)
        early = []  # steps whose request the search found already started before it asked

        async def step(generated):
            depth = len(generated[0])
            early.append(any(len(r.prompt_token_ids) - len(PROMPT) == depth > 0 for r in llm.started))
            return await steps(generated)

        try:
            got = await search(step, width, 12)
        finally:
            await steps.close()
        llm.early = early
        want = await search(plain_step, width, 12)
        assert [(b.tokens, b.cum_logprob, b.finish_reason) for b in got] == \
            [(b.tokens, b.cum_logprob, b.finish_reason) for b in want]
        ids = {r.request_id for r in llm.started}
        assert ids == llm.aborted | llm.exhausted  # every request ran to its end or was aborted
        return llm

    llm = asyncio.run(go())
    if lookahead == 1:
        assert not llm.aborted  # one token each: nothing runs ahead, nothing to abort
    # No request starts before the search asks for its beam: a step ahead was measured slower.
    assert not any(llm.early)


def test_a_beam_that_follows_its_greedy_token_reuses_the_running_request():
    async def go():
        llm = ScriptedLLM()
        steps = EngineSteps(llm, PROMPT, params_for, request_id="r", max_tokens=10, lookahead=10)
        beams = await search(steps, 1, 10)  # width 1 is greedy: one request serves every step
        await steps.close()
        return llm, beams

    llm, beams = asyncio.run(go())
    assert len(llm.started) == 1 and len(beams[0].tokens) == 10
    # Requests are copies of one validated request, each with the beam's own tokens.
    assert llm.started[0].prompt_token_ids == PROMPT


def test_requests_per_step_fall_below_one_per_beam():
    async def go():
        llm = ScriptedLLM()
        steps = EngineSteps(llm, PROMPT, params_for, request_id="r", max_tokens=16, lookahead=8)
        await search(steps, 3, 16)
        await steps.close()
        return llm

    llm = asyncio.run(go())
    assert len(llm.started) < 3 * 16
    assert len({r.request_id for r in llm.started}) == len(llm.started)  # unique ids


def test_every_steps_request_carries_the_searchs_trace_context():
    context = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

    async def go(trace_headers):
        llm = ScriptedLLM()
        steps = EngineSteps(llm, PROMPT, params_for, request_id="r", max_tokens=6, lookahead=2,
                            trace_headers=trace_headers)
        await search(steps, 2, 6)
        await steps.close()
        return llm.started

    traced = asyncio.run(go(context))
    assert len(traced) > 1 and all(r.trace_headers == context for r in traced)
    assert all(r.trace_headers is None for r in asyncio.run(go(None)))

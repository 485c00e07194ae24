"""engine/sampling.py maps the engine's input to vLLM's SamplingParams as it is: nothing resolved there.
In process, no engine (vLLM's SamplingParams is a plain object)."""

from __future__ import annotations

import dataclasses

from engine.grammar import json_object_grammar
from engine.request import Mode, StructuredOutput
from engine.sampling import beam_step_params, to_sampling_params
from schemas import ChatCompletionRequest
from tests.engine_inputs import engine_input

MSG = [{"role": "user", "content": "hi"}]


def gen(**fields):
    return engine_input(ChatCompletionRequest.model_validate({"messages": MSG, **fields}), [[1, 2, 3]])


def test_every_resolved_field_reaches_vllm():
    g = gen(temperature=0.5, top_p=0.9, top_k=7, min_p=0.1, presence_penalty=0.3, frequency_penalty=-0.4,
            repetition_penalty=1.2, skip_special_tokens=False, seed=11, stop="END", stop_token_ids=[5],
            min_tokens=2, ignore_eos=True, logit_bias={"9": 2.0}, max_tokens=4, n=2)
    p = to_sampling_params(g, stream=True)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.5, 0.9, 7, 0.1)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.3, -0.4, 1.2)
    assert (p.skip_special_tokens, p.seed, p.stop, p.stop_token_ids) == (False, 11, ["END"], [5])
    assert (p.min_tokens, p.ignore_eos, p.logit_bias, p.max_tokens, p.n) == (2, True, {9: 2.0}, 4, 2)


def test_best_of_keeps_the_logprobs_it_ranks_by():
    g = gen(best_of=3, n=1)
    assert g.mode is Mode.best_of and g.logprobs is None
    p = to_sampling_params(g, stream=False)
    assert (p.n, p.logprobs) == (3, 0)
    assert to_sampling_params(gen(n=3), stream=False).logprobs is None


def test_structured_output_reaches_vllm_as_its_grammar():
    shape = StructuredOutput(grammar=json_object_grammar())
    p = to_sampling_params(dataclasses.replace(gen(), structured_output=shape), stream=False)
    assert p.structured_outputs.grammar == shape.grammar and not p.structured_outputs.json_object
    assert to_sampling_params(gen(), stream=False).structured_outputs is None


def test_beam_steps_ask_for_twice_the_width():
    g = gen(use_beam_search=True, best_of=3, temperature=0)
    p = beam_step_params(g, 4)
    assert (p.logprobs, p.max_tokens, p.temperature, p.ignore_eos) == (6, 4, 0.0, True)

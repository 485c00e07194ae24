"""The gate (server/pipeline/validation.py) called directly: requests built from the schemas, no engine, no server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.request import BeamParameters, Mode, StructuredOutput
from schemas import ChatCompletionRequest, CompletionRequest
from server.errors import ContextLengthExceeded, InvalidInput, InvalidParameter, LimitExceeded, from_invalid_input
from server.pipeline.validation import API_DEFAULTS, check_prompt_chars, validate
from tests.engine_inputs import model_facts

MSG = [{"role": "user", "content": "hi"}]
PROMPT = [[1, 2, 3]]


@dataclass
class Limits:
    max_n: int = 4
    max_best_of: int = 6
    max_logprobs: int = 5
    max_prompts_per_request: int = 3
    max_sequences_per_request: int = 8
    max_prompt_chars: int = 100


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": MSG, **fields})


def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "hi", **fields})


def gate(req, prompts=PROMPT, limits=None, **facts):
    return validate(req, limits or Limits(), model_facts(**facts), prompts)


def refused(req, prompts=PROMPT, limits=None, **facts) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        gate(req, prompts, limits, **facts)
    return caught.value


# --- defaults, applied once


def test_a_bare_request_gets_every_api_default():
    gen = gate(chat())
    assert {name: getattr(gen, name) for name in API_DEFAULTS} == API_DEFAULTS
    assert API_DEFAULTS["temperature"] == 1.0 and API_DEFAULTS["skip_special_tokens"] is True
    assert (gen.mode, gen.n, gen.candidates) == (Mode.sample, 1, 1)
    assert gen.seed is None and gen.stop == () and gen.stop_token_ids == () and gen.logit_bias is None
    assert gen.min_tokens == 0 and gen.ignore_eos is False and gen.structured_output is None
    assert gen.logprobs is None and gen.prompt_logprobs is None and gen.beam is None and gen.adapter is None


def test_the_users_values_win_over_the_defaults():
    fields = {"temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1, "presence_penalty": 0.3,
              "frequency_penalty": -0.4, "repetition_penalty": 1.2, "skip_special_tokens": False}
    gen = gate(chat(**fields, seed=11, stop="END", stop_token_ids=[5], min_tokens=2, ignore_eos=True))
    assert {name: getattr(gen, name) for name in fields} == fields
    assert (gen.seed, gen.stop, gen.stop_token_ids, gen.min_tokens, gen.ignore_eos) == (11, ("END",), (5,), 2, True)
    assert gate(chat(stop=["a", "b"])).stop == ("a", "b")


def test_top_k_minus_one_means_off():
    assert gate(chat(top_k=-1)).top_k == 0 == API_DEFAULTS["top_k"]


def test_max_tokens_default_chat_takes_the_room_left_completions_16():
    assert gate(chat(), context_length=50).max_tokens == 47
    assert gate(completion(), context_length=50).max_tokens == 16
    assert gate(completion(), context_length=10).max_tokens == 7  # never more than the context leaves
    assert gate(chat(max_completion_tokens=9)).max_tokens == 9


def test_logit_bias_keys_become_token_ids():
    assert gate(chat(logit_bias={"5": 1.5, "0": -100})).logit_bias == {5: 1.5, 0: -100}


def test_the_structured_output_given_is_the_one_the_engine_gets():
    shape = StructuredOutput(grammar='root ::= "{}"')
    assert gate(chat()).structured_output is None
    assert validate(chat(), Limits(), model_facts(), PROMPT, structured_output=shape).structured_output is shape


def test_logprobs_and_echo():
    assert gate(chat(logprobs=True, top_logprobs=3)).logprobs == 3
    assert gate(chat(logprobs=True)).logprobs == 0
    assert gate(chat(logprobs=2)).logprobs == 2  # Llama's legacy integer form
    gen = gate(completion(logprobs=2, echo=True))
    assert (gen.logprobs, gen.prompt_logprobs) == (2, 2)
    assert gate(completion(logprobs=2)).prompt_logprobs is None


def test_pass_through_fields_are_carried():
    req = completion()
    req.__pydantic_extra__ = {"include_stop_str_in_output": True}  # what parse leaves after the header's check
    assert gate(req).pass_through == {"include_stop_str_in_output": True}


# --- n, best_of, beam search


def test_modes():
    assert (m := gate(chat(n=3))).mode is Mode.sample and (m.n, m.candidates) == (3, 3)
    assert (m := gate(chat(best_of=4, n=2))).mode is Mode.best_of and (m.n, m.candidates) == (2, 4)
    assert gate(chat(best_of=2, n=2)).mode is Mode.sample
    beam = gate(chat(use_beam_search=True, best_of=3, temperature=0, length_penalty=0.5, early_stopping=True))
    assert beam.mode is Mode.beam and (beam.n, beam.candidates) == (1, 3)
    assert beam.beam == BeamParameters(width=3, length_penalty=0.5, early_stopping=True)
    assert gate(chat(use_beam_search=True, n=2)).beam.width == 2  # the width is best_of, else n


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 5}, "n"),
    ({"n": 3, "best_of": 2}, "best_of"),
    ({"best_of": 7}, "best_of"),
    ({"use_beam_search": True}, "best_of"),  # a width of 1
    ({"use_beam_search": True, "n": 2, "temperature": 0.7}, "temperature"),
    ({"use_beam_search": True, "n": 2, "stream": True}, "stream"),
    ({"use_beam_search": True, "n": 2, "stop": ["x"]}, "stop"),
    ({"use_beam_search": True, "n": 2, "logit_bias": {"1": 1}}, "logit_bias"),
    ({"use_beam_search": True, "n": 2, "min_tokens": 1}, "min_tokens"),
    ({"best_of": 2, "stream": True}, "best_of"),
    ({"n": 2, "temperature": 0}, "n"),
    ({"best_of": 2, "temperature": 0}, "best_of"),
    ({"logprobs": 6}, "logprobs"),
])
def test_choice_rules_name_the_parameter(fields, param):
    err = refused(chat(**fields))
    assert type(err) is InvalidParameter and err.param == param and err.code == "invalid_parameter"


def test_the_sequence_cap_counts_prompts_times_candidates():
    err = refused(completion(prompt=["a", "b", "c"], n=3))  # 9 > 8
    assert type(err) is LimitExceeded and (err.param, err.code) == ("prompt", "too_many_sequences")
    err = refused(chat(best_of=6, n=1), limits=Limits(max_sequences_per_request=5))
    assert (err.param, err.code) == ("best_of", "too_many_sequences")
    err = refused(chat(n=4), limits=Limits(max_sequences_per_request=3))
    assert (err.param, err.code) == ("n", "too_many_sequences")
    assert gate(completion(prompt=["a", "b"], n=4), [[1], [2]]).candidates == 4  # 8: fits


# --- per-API rules


def test_chat_rules():
    assert refused(chat(top_logprobs=2)).param == "top_logprobs"  # without logprobs: true
    assert refused(chat(logprobs=True, top_logprobs=6)).param == "top_logprobs"
    err = refused(chat(), is_chat=False)
    assert err.param == "messages" and "completions route" in err.message


def test_completion_rules():
    assert refused(completion(suffix="tail")).param == "suffix"
    err = refused(completion(prompt=["a", "b", "c", "d"]))
    assert type(err) is LimitExceeded and (err.param, err.code) == ("prompt", "too_many_prompts")


# --- the model's facts


def test_context_length():
    err = refused(chat(), prompts=[[1] * 10], context_length=10)
    assert type(err) is ContextLengthExceeded and (err.param, err.code) == ("messages", "context_length_exceeded")
    assert refused(completion(), prompts=[[1] * 10], context_length=10).param == "prompt"
    err = refused(completion(max_tokens=5), prompts=[[1] * 6], context_length=10)
    assert type(err) is ContextLengthExceeded and err.param == "max_tokens"
    assert gate(completion(max_tokens=4), prompts=[[1] * 6], context_length=10).max_tokens == 4  # exactly fits
    # The longest prompt decides.
    err = refused(completion(prompt=["a", "b"], max_tokens=4), prompts=[[1], [1] * 7], context_length=10)
    assert err.param == "max_tokens" and "7 tokens" in err.message


def test_token_ids_outside_the_vocabulary():
    assert refused(chat(logit_bias={"1000": 1}), vocab_size=1000).param == "logit_bias"
    assert refused(chat(stop_token_ids=[3, 1000]), vocab_size=1000).param == "stop_token_ids"
    assert refused(completion(prompt=[1, 1000]), prompts=[[1, 1000]], vocab_size=1000).param == "prompt"
    assert gate(chat(logit_bias={"999": 1}, stop_token_ids=[999]), vocab_size=1000).logit_bias == {999: 1}


def test_prompt_characters():
    check_prompt_chars(100, Limits(), "prompt")
    with pytest.raises(LimitExceeded) as caught:
        check_prompt_chars(101, Limits(), "messages")
    assert (caught.value.param, caught.value.code) == ("messages", "prompt_too_large")


# --- the errors' HTTP shape


def test_every_refusal_is_a_400_naming_its_parameter():
    for err in (InvalidParameter("m", "n"), ContextLengthExceeded("m", "max_tokens"),
                LimitExceeded("m", "prompt", "too_many_prompts")):
        api = from_invalid_input(err)
        assert (api.status, api.param, api.code, api.message) == (400, err.param, err.code, "m")

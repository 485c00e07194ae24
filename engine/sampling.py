"""The one place where API request fields become vLLM sampling parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import xgrammar
from pydantic import BaseModel, ConfigDict, Field
from vllm.exceptions import VLLMError
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from engine.adapters import Adapter
from engine.errors import InvalidGenerationRequest
from schemas.common import GenerationRequest

# vLLM sampling fields the API does not define, which `extra-parameters: pass-through` may set.
# (Fields the API defines, such as top_k or ignore_eos, are ordinary request fields.)
class _PassThrough(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    bad_words: Annotated[list[str], Field(max_length=256)] | None = None
    allowed_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None


PASS_THROUGH_FIELDS = frozenset(_PassThrough.model_fields)


def validate_pass_through(extras: dict[str, Any]) -> dict[str, Any]:
    """Type-checked engine fields; raises pydantic's ValidationError naming each bad one."""
    return _PassThrough.model_validate(extras).model_dump(exclude_unset=True)


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """What to generate, resolved against the model: the request's fields plus the server's decisions."""

    request: GenerationRequest
    max_tokens: int
    num_choices: int  # candidates generated (best_of, or n)
    num_logprobs: int | None  # top-k asked for by the client, None for none
    prompt_logprobs: int | None = None  # echo with logprobs
    pass_through: dict[str, Any] | None = None
    # A grammar (xgrammar EBNF, from `llama_json_grammar`) the output must match, decided by the server for a
    # forced tool call; it overrides response_format.
    output_grammar: str | None = None
    adapter: Adapter | None = None  # the LoRA adapter the request's `model` names


def to_sampling_params(plan: GenerationPlan, *, stream: bool) -> SamplingParams:
    req = plan.request
    logprobs = plan.num_logprobs
    if plan.num_choices > req.n and logprobs is None:
        logprobs = 0  # best_of ranks by the sampled tokens' logprobs, which vLLM only keeps when asked
    kwargs: dict[str, Any] = dict(
        n=plan.num_choices,
        max_tokens=plan.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        top_k=0 if req.top_k in (None, -1) else req.top_k,
        min_p=req.min_p or 0.0,
        min_tokens=req.min_tokens,
        seed=req.seed,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids,
        ignore_eos=req.ignore_eos,
        skip_special_tokens=True if req.skip_special_tokens is None else req.skip_special_tokens,
        logprobs=logprobs,
        prompt_logprobs=plan.prompt_logprobs,
        logit_bias=_logit_bias(req.logit_bias),
        structured_outputs=_structured_outputs(req, plan.output_grammar),
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        # Made fresh for each engine request, so vLLM's defensive deep copy per request is not needed.
        skip_clone=True,
    )
    if plan.pass_through:
        kwargs.update(plan.pass_through)
    try:
        return SamplingParams(**kwargs)
    except (VLLMError, ValueError, TypeError) as exc:
        raise InvalidGenerationRequest(str(exc)) from exc


def beam_step_params(plan: GenerationPlan, max_tokens: int = 1) -> SamplingParams:
    """Beam-search steps: greedy tokens, each with the 2 x width most likely alternatives at its position.

    Past one token the request runs ahead on its greedy path (engine.beam_steps); the search, not the engine,
    decides where beams end, so EOS does not stop it.
    """
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=2 * plan.num_choices, detokenize=False,
                          ignore_eos=True, output_kind=RequestOutputKind.DELTA, skip_clone=True)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError as exc:
        raise InvalidGenerationRequest("logit_bias keys must be token ids", "logit_bias") from exc


def _structured_outputs(req: GenerationRequest, grammar: str | None) -> StructuredOutputsParams | None:
    if grammar is not None:
        return StructuredOutputsParams(grammar=grammar)
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    assert fmt.json_schema is not None
    return StructuredOutputsParams(json=fmt.json_schema.json_schema)


def llama_json_grammar(schema: dict[str, Any]) -> str:
    """The schema as a grammar for JSON written the way Llama writes it (and Meta's templates render it):
    `{"a": 1, "b": [2, 3]}`, one space after each `:` and `,` and nowhere else. Free whitespace, the default of
    a json schema request, lets a weak or random-weight model write blanks until max_tokens."""
    try:
        return str(xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": ")))
    except RuntimeError as exc:
        raise InvalidGenerationRequest(f"a tool's parameters cannot be enforced as a JSON schema: {exc}", "tools") from exc

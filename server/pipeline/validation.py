"""The gate's rules: what a request means, checked against the server's limits and the model's facts.

As TGI's `Validation::validate`: the request's cross-field rules, the server's limits and the model's facts are
checked here, and every default is applied here, once (the table below); what fails raises one of the gate's typed
refusals (server/errors.py `InvalidInput`), which name the parameter. The gate itself, which runs these rules once
per request, is server/pipeline/generation.py. Pydantic (schemas/) has checked each field's shape and range before:
validation has two homes, the wire schemas and the gate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import InvalidGenerationRequest
from engine.request import BeamParameters, GenerationInput, Mode, StructuredOutput
from schemas import ChatCompletionRequest, CompletionRequest, GenerationRequest
from schemas.completions import DEFAULT_COMPLETION_MAX_TOKENS
from server.errors import ContextLengthExceeded, InvalidParameter, LimitExceeded

if TYPE_CHECKING:
    from engine.adapters import Adapter
    from server.settings import ApiLimits

# --- what the gate checks against


@dataclass(frozen=True)
class ModelFacts:
    context_length: int
    is_chat: bool
    # Raises InvalidParameter naming `param` for an id outside the vocabulary.
    check_token_ids: Callable[[Sequence[int], str], None]

    @classmethod
    def of(cls, engine: Any) -> ModelFacts:
        def check(token_ids: Sequence[int], param: str) -> None:
            try:
                engine.check_token_ids(list(token_ids), param)
            except InvalidGenerationRequest as exc:
                raise InvalidParameter(exc.message, exc.param) from exc

        return cls(engine.info.max_model_len, engine.info.is_chat, check)


# --- the defaults, applied once: user value -> API default (OpenAI's, else vLLM's "off").
# The checkpoint's generation_config is not a default: the engine starts with generation_config="vllm".
API_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,  # off (-1 from a client also means off)
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "skip_special_tokens": True,
}
# max_tokens: the user's, else completions' API default (16), else (chat) what the context leaves; never more than it.


def _resolved(req: GenerationRequest, name: str) -> Any:
    value = getattr(req, name)
    if name == "top_k" and value == -1:
        value = None
    return API_DEFAULTS[name] if value is None else value


@dataclass(frozen=True)
class Choices:
    mode: Mode
    n: int  # returned
    candidates: int  # generated


# --- the gate


def check_request(req: GenerationRequest, limits: ApiLimits, model: ModelFacts) -> Choices:
    """Every rule the request alone decides, before any work is done for its prompt; `validate` starts with it."""
    if isinstance(req, ChatCompletionRequest):
        if not model.is_chat:
            raise InvalidParameter("this model has no chat template; use the completions route", "messages")
        if req.top_logprobs is not None and req.logprobs is not True:
            raise InvalidParameter("top_logprobs requires logprobs: true", "top_logprobs")
        if req.top_logprobs is not None and req.top_logprobs > limits.max_logprobs:
            raise InvalidParameter(f"top_logprobs must be at most {limits.max_logprobs}", "top_logprobs")
        num_prompts = 1
    elif isinstance(req, CompletionRequest):
        if req.suffix:
            raise InvalidParameter("suffix is not supported: Llama models do not fill in the middle", "suffix")
        num_prompts = len(req.prompts())
        if num_prompts > limits.max_prompts_per_request:
            raise LimitExceeded(f"prompt has {num_prompts} prompts, more than the limit of "
                                f"{limits.max_prompts_per_request} per request", "prompt", "too_many_prompts")
    else:
        raise TypeError(f"not a generation request: {type(req).__name__}")
    choices = _choices(req, limits, req.num_logprobs())
    if num_prompts * choices.candidates > limits.max_sequences_per_request:
        param = "prompt" if num_prompts > 1 else ("best_of" if choices.candidates > req.n else "n")
        raise LimitExceeded(
            f"{num_prompts} prompt(s) x {choices.candidates} candidates would start {num_prompts * choices.candidates}"
            f" engine sequences, more than the limit of {limits.max_sequences_per_request} per request",
            param, "too_many_sequences",
        )
    return choices


def validate(req: GenerationRequest, limits: ApiLimits, model: ModelFacts, prompts: list[list[int]], *,
             structured_output: StructuredOutput | None = None, adapter: Adapter | None = None,
             choices: Choices | None = None) -> GenerationInput:
    """The engine's input for `req` on `prompts` (token ids, one list per prompt), or an InvalidInput.

    `structured_output`: the grammar the answer must match (server/pipeline/structured.py), None for free text;
    `adapter`: the LoRA adapter the request's `model` names, None for the base model; `choices`: what
    `check_request` gave for `req`, which runs here when it has not run before.
    """
    if choices is None:
        choices = check_request(req, limits, model)
    chat = isinstance(req, ChatCompletionRequest)
    if isinstance(req, CompletionRequest):
        for given in req.prompts():
            if not isinstance(given, str):
                model.check_token_ids(given, "prompt")
    if req.stop_token_ids:
        model.check_token_ids(req.stop_token_ids, "stop_token_ids")
    logit_bias = _logit_bias(req, model)
    max_tokens = _max_tokens(req, max(len(p) for p in prompts), model.context_length,
                             "messages" if chat else "prompt", None if chat else DEFAULT_COMPLETION_MAX_TOKENS)
    logprobs = req.num_logprobs()
    echo = isinstance(req, CompletionRequest) and req.echo
    return GenerationInput(
        mode=choices.mode,
        n=choices.n,
        candidates=choices.candidates,
        max_tokens=max_tokens,
        **{name: _resolved(req, name) for name in API_DEFAULTS},
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        seed=req.seed,
        stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
        stop_token_ids=tuple(req.stop_token_ids or ()),
        logit_bias=logit_bias,
        structured_output=structured_output,
        logprobs=logprobs,
        prompt_logprobs=logprobs if echo else None,
        pass_through=req.extra_fields(),
        adapter=adapter,
        beam=BeamParameters(choices.candidates, req.length_penalty, req.early_stopping)
        if choices.mode is Mode.beam else None,
    )


def check_prompt_chars(chars: int, limits: ApiLimits, param: str) -> None:
    """Text is bounded before it is tokenised, whose cost grows with it."""
    if chars > limits.max_prompt_chars:
        raise LimitExceeded(f"{param} holds {chars} characters of text, more than the limit of "
                            f"{limits.max_prompt_chars} per request", param, "prompt_too_large")


# --- the rules


def _choices(req: GenerationRequest, limits: ApiLimits, num_logprobs: int | None) -> Choices:
    """n, best_of, beam search and logprobs."""
    if req.n > limits.max_n:
        raise InvalidParameter(f"n must be at most {limits.max_n}", "n")
    if num_logprobs is not None and num_logprobs > limits.max_logprobs:
        raise InvalidParameter(f"logprobs must be at most {limits.max_logprobs}", "logprobs")
    best_of = req.best_of if req.best_of is not None else req.n
    if best_of < req.n:
        raise InvalidParameter(f"best_of ({best_of}) must be greater than or equal to n ({req.n})", "best_of")
    if best_of > limits.max_best_of:
        raise InvalidParameter(f"best_of must be at most {limits.max_best_of}", "best_of")
    if req.use_beam_search:
        if best_of <= 1:
            raise InvalidParameter("use_beam_search needs a beam width (best_of, else n) greater than 1", "best_of")
        if req.temperature not in (None, 0):
            raise InvalidParameter("use_beam_search requires temperature 0", "temperature")
        if req.stream:
            raise InvalidParameter("use_beam_search cannot be streamed", "stream")
        if req.stop:
            raise InvalidParameter("stop strings are not supported with use_beam_search; use stop_token_ids", "stop")
        # Beams are ranked on the model's own logprobs, which biases and minimums would not change.
        for name in ("logit_bias", "min_tokens"):
            if getattr(req, name):
                raise InvalidParameter(f"{name} is not supported with use_beam_search", name)
        return Choices(Mode.beam, req.n, best_of)
    if req.stream and best_of > req.n:
        raise InvalidParameter("best_of > n cannot be streamed: candidates are ranked after they finish", "best_of")
    if best_of > 1 and req.temperature == 0:
        param = "best_of" if best_of > req.n else "n"
        raise InvalidParameter(f"{param} > 1 needs sampling: temperature 0 would give {best_of} identical answers",
                               param)
    return Choices(Mode.best_of if best_of > req.n else Mode.sample, req.n, best_of)


def _max_tokens(req: GenerationRequest, prompt_len: int, context: int, prompt_param: str, default: int | None) -> int:
    room = context - prompt_len
    if room < 1:
        raise ContextLengthExceeded(
            f"the prompt is {prompt_len} tokens, which leaves no room in the model's context of {context} tokens",
            prompt_param,
        )
    if req.max_tokens is None:
        return room if default is None else min(default, room)
    if req.max_tokens > room:
        raise ContextLengthExceeded(
            f"prompt ({prompt_len} tokens) + max_tokens ({req.max_tokens}) exceeds the model's context of "
            f"{context} tokens",
            "max_tokens",
        )
    return req.max_tokens


def _logit_bias(req: GenerationRequest, model: ModelFacts) -> dict[int, float] | None:
    if not req.logit_bias:
        return None
    try:
        bias = {int(token): value for token, value in req.logit_bias.items()}
    except ValueError:
        raise InvalidParameter("logit_bias keys must be token ids", "logit_bias") from None
    model.check_token_ids(list(bias), "logit_bias")
    return bias

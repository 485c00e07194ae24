"""The one place where the engine's input (engine/request.py) becomes vLLM sampling parameters.

Nothing is resolved here: the input arrives with every default applied (server/pipeline/validation.py).
"""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMError
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from engine.errors import InvalidGenerationRequest
from engine.request import GenerationInput, Mode, StructuredOutput


def to_sampling_params(gen: GenerationInput, *, stream: bool) -> SamplingParams:
    logprobs = gen.logprobs
    if gen.mode is Mode.best_of and logprobs is None:
        logprobs = 0  # best_of ranks by the sampled tokens' logprobs, which vLLM only keeps when asked
    kwargs: dict[str, Any] = dict(
        n=gen.candidates,
        max_tokens=gen.max_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        presence_penalty=gen.presence_penalty,
        frequency_penalty=gen.frequency_penalty,
        repetition_penalty=gen.repetition_penalty,
        top_k=gen.top_k,
        min_p=gen.min_p,
        min_tokens=gen.min_tokens,
        seed=gen.seed,
        stop=list(gen.stop),
        stop_token_ids=list(gen.stop_token_ids),
        ignore_eos=gen.ignore_eos,
        skip_special_tokens=gen.skip_special_tokens,
        logprobs=logprobs,
        prompt_logprobs=gen.prompt_logprobs,
        logit_bias=dict(gen.logit_bias) if gen.logit_bias else None,
        structured_outputs=_structured_outputs(gen.structured_output),
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        # Made fresh for each engine request, so vLLM's defensive deep copy per request is not needed.
        skip_clone=True,
    )
    kwargs.update(gen.pass_through)
    try:
        return SamplingParams(**kwargs)
    except (VLLMError, ValueError, TypeError) as exc:
        raise InvalidGenerationRequest(str(exc)) from exc


def beam_step_params(gen: GenerationInput, max_tokens: int = 1) -> SamplingParams:
    """Beam-search steps: greedy tokens, each with the 2 x width most likely alternatives at its position.

    Past one token the request runs ahead on its greedy path (engine.beam_steps); the search, not the engine,
    decides where beams end, so EOS does not stop it.
    """
    assert gen.beam is not None
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=2 * gen.beam.width, detokenize=False,
                          ignore_eos=True, output_kind=RequestOutputKind.DELTA, skip_clone=True)


def _structured_outputs(shape: StructuredOutput | None) -> StructuredOutputsParams | None:
    if shape is None:
        return None
    return StructuredOutputsParams(grammar=shape.grammar)

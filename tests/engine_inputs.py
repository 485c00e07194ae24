"""Engine inputs for in-process tests, made the way the server makes them: through the gate."""

from __future__ import annotations

from collections.abc import Sequence

from engine.request import GenerationInput
from schemas import GenerationRequest
from server.settings import Settings
from server.errors import InvalidParameter
from server.pipeline.validation import ModelFacts


def vocabulary_check(size: int):
    def check(token_ids: Sequence[int], param: str) -> None:
        bad = [t for t in token_ids if t >= size]
        if bad:
            raise InvalidParameter(f"token id {bad[0]} is out of the vocabulary (size {size})", param)

    return check


def model_facts(context_length: int = 10**6, vocab_size: int = 1000, is_chat: bool = True) -> ModelFacts:
    return ModelFacts(context_length, is_chat, vocabulary_check(vocab_size))


def engine_input(req: GenerationRequest, prompts: list[list[int]], settings: Settings | None = None) -> GenerationInput:
    from server.pipeline.validation import validate

    return validate(req, settings or Settings(), model_facts(), prompts)

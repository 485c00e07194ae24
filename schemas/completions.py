"""Text completion requests (Azure /completions, OpenAI legacy and Llama /v1/completions)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.common import GenerationRequest

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]

DEFAULT_COMPLETION_MAX_TOKENS = 16


class CompletionRequest(GenerationRequest):
    # OpenAI allows a string, a list of strings, a list of token ids, or a list of token-id lists.
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0)] | None = None
    echo: bool = False
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts (text or token ids)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]

    def num_logprobs(self) -> int | None:
        return self.logprobs

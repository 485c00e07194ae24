"""The Azure `extra-parameters` contract: what happens to body fields the API does not define.

The documented Llama extras (n, best_of, logprobs, ignore_eos, use_beam_search, stop_token_ids,
skip_special_tokens) are declared request fields, so they are accepted whatever the header says.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class ExtraParametersMode(str, Enum):
    error = "error"
    drop = "drop"
    pass_through = "pass-through"


class _PassThrough(BaseModel):
    """vLLM sampling fields the API does not define, which `extra-parameters: pass-through` may set.
    (Fields the API defines, such as top_k or ignore_eos, are ordinary request fields.)"""

    model_config = ConfigDict(extra="forbid", strict=True)
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    bad_words: Annotated[list[str], Field(max_length=256)] | None = None
    allowed_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None


PASS_THROUGH_FIELDS = frozenset(_PassThrough.model_fields)


def validate_pass_through(extras: dict[str, Any]) -> dict[str, Any]:
    """Type-checked engine fields; raises pydantic's ValidationError naming each bad one."""
    return _PassThrough.model_validate(extras).model_dump(exclude_unset=True)

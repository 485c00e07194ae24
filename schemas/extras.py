"""The Azure `extra-parameters` contract: what happens to body fields the API does not define."""

from enum import Enum


class ExtraParametersMode(str, Enum):
    error = "error"
    drop = "drop"
    pass_through = "pass-through"


# Documented Llama extras: accepted whatever the header says, since Llama clients send them as plain fields.
LLAMA_EXTRA_FIELDS = frozenset(
    {"n", "best_of", "logprobs", "ignore_eos", "use_beam_search", "stop_token_ids", "skip_special_tokens"}
)

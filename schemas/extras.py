"""The Azure `extra-parameters` contract: what happens to body fields the API does not define.

The documented Llama extras (n, best_of, logprobs, ignore_eos, use_beam_search, stop_token_ids,
skip_special_tokens) are declared request fields, so they are accepted whatever the header says.
"""

from enum import Enum


class ExtraParametersMode(str, Enum):
    error = "error"
    drop = "drop"
    pass_through = "pass-through"


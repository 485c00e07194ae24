"""Request and response models of the HTTP API. Pure pydantic: nothing here imports vLLM."""

from schemas.chat import ChatCompletionRequest, ChatMessage
from schemas.common import GenerationRequest, ResponseFormat, StreamOptions
from schemas.completions import CompletionRequest
from schemas.extras import ExtraParametersMode

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ExtraParametersMode",
    "GenerationRequest",
    "ResponseFormat",
    "StreamOptions",
]

"""Fields shared by chat and text completions, with the validation rules that apply to both."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Float = Annotated[float, Field(allow_inf_nan=False)]
# vLLM's GPU model runner keeps the seed in an int64 tensor: a larger one kills the engine.
INT64_MAX = 2**63 - 1
# Beam scores divide by length ** length_penalty: beyond this the power overflows a float for long beams.
LENGTH_PENALTY_LIMIT = 10.0
# logit_bias keys are token ids in canonical decimal form: int() would also take "+5", " 5", "05" or "٥".
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,9})$")]
# A routing key, not text: long enough for a UUID or a hash of a user's or conversation's id.
PROMPT_CACHE_KEY_MAX_CHARS = 256


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = True
    continuous_usage_stats: bool = False


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    name: str = "response"
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is json_schema")
        return self


class GenerationRequest(BaseModel):
    """Everything both completion routes accept besides the prompt itself.

    Unknown fields are kept (extra="allow") so that the route can apply the `extra-parameters` header to them.
    Strict types: "10" is not an integer and "true" is not a boolean, as in the OpenAI API.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=INT64_MAX)] | None = None
    user: str | None = None
    # OpenAI's prompt-cache routing hint: requests that share it share a prefix. It never reaches the engine, so it
    # cannot change the output; the Inference Gateway's endpoint picker may read it from the body to keep a session
    # on one replica (docs/DEPLOY.md, "Session affinity").
    prompt_cache_key: Annotated[str, Field(max_length=PROMPT_CACHE_KEY_MAX_CHARS)] | None = None
    response_format: ResponseFormat | None = None
    logit_bias: dict[TokenIdKey, Annotated[Float, Field(ge=-100, le=100)]] | None = None

    # Llama / vLLM extras
    best_of: Annotated[int, Field(ge=1)] | None = None
    use_beam_search: bool = False
    length_penalty: Annotated[Float, Field(ge=-LENGTH_PENALTY_LIMIT, le=LENGTH_PENALTY_LIMIT)] = 1.0
    early_stopping: bool = False
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    skip_special_tokens: bool | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[Float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0, le=2)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

"""OpenAI Responses requests (`POST /v1/responses`): input items, flat function tools, `text.format`.

Only what a text model can serve is accepted: an item or content part of any other type (images, files, built-in
tools) is refused by name, as an unknown field is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from schemas.common import INT64_MAX, Float, JsonSchemaSpec
from schemas.tools import FunctionName


class InputText(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["input_text"]
    text: str


class OutputText(BaseModel):
    """An assistant's text as a response's output gave it, sent back as input (SDKs replay output items)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


ContentPart = Annotated[InputText | OutputText, Field(discriminator="type")]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function_call"]
    id: str | None = None
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    name: FunctionName
    arguments: str
    status: ItemStatus | None = None


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    output: str | list[InputText]
    status: ItemStatus | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


def _item_type(value: Any) -> str | None:
    # A message may leave out its type (OpenAI's "easy" input message).
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type, custom_error_type="invalid_item_type",
                  custom_error_message="an input item's type must be message, function_call or "
                                       "function_call_output"),
]


class FunctionTool(BaseModel):
    """Responses' function tools are flat: name and parameters beside the type."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    name: str


class TextFormatText(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]


class TextFormatJsonObject(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["json_object"]


class TextFormatJsonSchema(JsonSchemaSpec):
    """Flat, as Responses has it: name, schema and strict beside the type."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


# What `include` may name: the logprobs of output text; the others name outputs of tools this server has not, so
# they change nothing.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
Includable = Literal[
    "message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url",
    "computer_call_output.output.image_url", "file_search_call.results", "web_search_call.results",
    "web_search_call.action.sources", "code_interpreter_call.outputs",
]


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`. Unknown fields are kept (extra="allow") for the `extra-parameters` header, as chat's."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    input: Annotated[
        Annotated[str, Tag("text")] | Annotated[list[InputItem], Field(min_length=1), Tag("items")],
        Discriminator(lambda v: "items" if isinstance(v, list) else "text"),
    ]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # A routing hint for the prefix cache, as OpenAI's: it changes nothing in the output.
    prompt_cache_key: Annotated[str, Field(max_length=1024)] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    include: list[Includable] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    # Llama / vLLM extras, as chat's
    seed: Annotated[int, Field(ge=-(2**63), le=INT64_MAX)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[Float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0, le=2)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _background_is_stored(self) -> ResponsesRequest:
        if self.background and not self.store:
            raise ValueError("background responses must be stored: background requires store true")
        if self.background and self.stream:
            raise ValueError("background responses are not streamed: poll GET /v1/responses/{id} instead")
        return self

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem]:
        """The input as items: a string is one user message."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def wants_logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or ())

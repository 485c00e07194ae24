"""Tool calling fields of chat requests, in OpenAI's shape (the Azure AI Model Inference API uses the same)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.json_depth import MAX_JSON_DEPTH, text_deeper_than

# OpenAI's rule for function names; it also keeps names safe inside a Python call or a JSON string.
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: FunctionName
    description: str | None = None
    # A JSON Schema for the arguments object; omitted means the function takes no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    arguments: str  # a JSON text, as OpenAI sends it

    @field_validator("arguments")
    @classmethod
    def _not_too_deep(cls, text: str) -> str:
        if text_deeper_than(text, MAX_JSON_DEPTH):
            raise ValueError(f"arguments nest deeper than {MAX_JSON_DEPTH} levels of JSON")
        return text


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

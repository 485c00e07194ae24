"""A chat request's tools, checked and resolved: what reaches the template, the engine and the parser."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from schemas.chat import ChatCompletionRequest, ChatMessage
from schemas.tools import NamedToolChoice, Tool
from server.errors import InvalidParameter
from server.pipeline.structured import check_schemas
from server.pipeline.tools.parsers import CallParser, ForcedCallParser
from server.pipeline.tools.schema import call_schema

@dataclass(frozen=True)
class ToolPlan:
    names: frozenset[str]
    format: str
    forced: bool  # required or a named function: structured output writes the call
    max_calls: int | None  # 1 when parallel_tool_calls is false
    schema: dict[str, Any] | None  # the call shape structured output enforces (forced only)
    template_tools: list[dict[str, Any]]  # as chat templates take them

    def parser(self) -> CallParser | ForcedCallParser:
        if self.forced:
            return ForcedCallParser(self.names)
        # Meta's templates for 3.2 and 4 ask for JSON, yet those models often answer in Python syntax: read both.
        return CallParser(self.names, pythonic=self.format != "llama3_json", max_calls=self.max_calls)


def resolve(req: ChatCompletionRequest, fmt: str) -> ToolPlan | None:
    """The request's tool calling, or None when it has none (no tools, or tool_choice none). 400 on misuse."""
    check_history(req.messages)
    tools = req.tools or []
    names = [t.function.name for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InvalidParameter(f"tools declares the function {duplicate!r} more than once", "tools")
    for i, t in enumerate(tools):
        params = t.function.parameters
        if params is not None and params.get("type", "object") != "object":
            raise InvalidParameter(f"tools[{i}].function.parameters must be a JSON Schema of an object", "tools")
    check_schemas([t.function.parameters for t in tools if t.function.parameters is not None], "tools")
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    if choice == "required" or isinstance(choice, NamedToolChoice):
        if not tools:
            raise InvalidParameter("tool_choice requires tools", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidParameter(f"tool_choice names the function {choice.function.name!r}, which tools does not declare",
                               "tool_choice")
    if choice == "none" or not tools:
        return None  # OpenAI: none means the model will not call a tool, so it is not shown any
    forced = choice == "required" or isinstance(choice, NamedToolChoice)
    if forced and req.response_format is not None and req.response_format.type != "text":
        raise InvalidParameter("response_format cannot be combined with tool_choice required or a named function",
                               "response_format")
    targets = [t for t in tools if not isinstance(choice, NamedToolChoice) or t.function.name == choice.function.name]
    return ToolPlan(
        names=frozenset(t.function.name for t in targets),
        format=fmt,
        forced=forced,
        max_calls=None if req.parallel_tool_calls else 1,
        schema=call_schema([_closed(t) for t in targets]) if forced else None,
        template_tools=[t.model_dump(exclude_none=True) for t in tools],
    )


def _closed(tool: Tool) -> Tool:
    """A forced call takes the arguments its function declares and no others, unless the schema says otherwise
    (a random-weight model under vLLM's `required` invented keys the function does not have)."""
    params = tool.function.parameters
    if params is None or "properties" not in params or "additionalProperties" in params:
        return tool
    closed = copy.deepcopy(tool)
    assert closed.function.parameters is not None
    closed.function.parameters["additionalProperties"] = False
    return closed


def check_history(messages: list[ChatMessage]) -> None:
    """Tool results answer a call made earlier in the conversation; only assistants make calls."""
    called: set[str] = set()
    for i, m in enumerate(messages):
        if m.tool_calls is not None and m.role != "assistant":
            raise InvalidParameter(f"messages[{i}]: only assistant messages carry tool_calls", "messages")
        for call in m.tool_calls or ():
            called.add(call.id)
        if m.role == "tool":
            if m.tool_call_id is None:
                raise InvalidParameter(f"messages[{i}]: a tool message needs the tool_call_id it answers", "messages")
            if m.tool_call_id not in called:
                raise InvalidParameter(
                    f"messages[{i}]: tool_call_id {m.tool_call_id!r} answers no tool call of an earlier assistant "
                    "message",
                    "messages",
                )


def for_template(messages: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Llama 3.1's format has one call per assistant turn (Meta's template raises on more): an assistant
    message with several calls goes to the template as consecutive turns of one call each."""
    if fmt != "llama3_json":
        return messages
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls and len(calls) > 1:
            out += [{**m, "tool_calls": [c], "content": m["content"] if i == 0 else ""} for i, c in enumerate(calls)]
        else:
            out.append(m)
    return out

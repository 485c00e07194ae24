"""Input items: given an id each and kept as the store keeps them, checked as a conversation, and turned into the
chat machinery's messages (roles user/system/developer/assistant; `function_call` items the assistant's tool calls,
`function_call_output` items tool messages), so that the gate's rules, the tools plan and the template are chat's.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from schemas.chat import ChatMessage
from schemas.responses import FunctionCallItem, FunctionCallOutputItem, InputItem, MessageItem
from schemas.tools import FunctionCall, ToolCall
from server.errors import InvalidParameter
from server.pipeline.responses.objects import new_id

Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ITEMS = TypeAdapter(list[InputItem])
_PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}


def stored(item: Item) -> dict[str, Any]:
    """The item as the store keeps it and `input_items` lists it: with an id and a status, content as parts."""
    out: dict[str, Any] = {"id": item.id or new_id(_PREFIX[item.type]), "type": item.type}
    if isinstance(item, MessageItem):
        part = "output_text" if item.role == "assistant" else "input_text"
        parts = [{"type": part, "text": item.content}] if isinstance(item.content, str) else \
            [p.model_dump(exclude_none=True) for p in item.content]
        for p in parts:
            if p["type"] == "output_text":
                p.setdefault("annotations", [])
        out.update(role=item.role, content=parts)
    elif isinstance(item, FunctionCallItem):
        out.update(call_id=item.call_id, name=item.name, arguments=item.arguments)
    else:
        out.update(call_id=item.call_id, output=item.text())
    out["status"] = item.status or "completed"
    return out


def replayed(items: list[dict[str, Any]]) -> list[Item]:
    """Stored items (an earlier response's input and output) as items again."""
    try:
        return _ITEMS.validate_python(items)
    except ValidationError as exc:  # a record written by another version of the server
        raise InvalidParameter(f"previous_response_id: its stored items cannot be replayed ({exc.error_count()} "
                               "errors)", "previous_response_id") from None


def check_new_items(history: list[Item], new: list[Item]) -> None:
    """With `previous_response_id`, the input holds only what is new: an item the chain already holds, by id or
    by call id, is a history that conflicts with the stored one."""
    ids = {i.id for i in history if i.id}
    calls = {i.call_id for i in history if isinstance(i, FunctionCallItem)}
    answered = {i.call_id for i in history if isinstance(i, FunctionCallOutputItem)}
    for n, item in enumerate(new):
        if item.id and item.id in ids:
            raise InvalidParameter(f"input[{n}]: item {item.id!r} is already in the history of previous_response_id; "
                                   "send only the new items", "input", "conflicting_history")
        if isinstance(item, FunctionCallItem) and item.call_id in calls:
            raise InvalidParameter(f"input[{n}]: the call {item.call_id!r} is already in the history of "
                                   "previous_response_id; send only the new items", "input", "conflicting_history")
        if isinstance(item, FunctionCallOutputItem) and item.call_id in answered:
            raise InvalidParameter(f"input[{n}]: the call {item.call_id!r} was answered in the history of "
                                   "previous_response_id already", "input", "conflicting_history")


def chat_messages(instructions: str | None, items: list[Item], first_new: int) -> list[ChatMessage]:
    """The conversation as chat messages. Consecutive calls (with the assistant text just before them) are one
    assistant turn; every `function_call_output` answers a call made before it, once. `first_new`: the index of
    this request's first own item, by which errors name it (`input[i]`)."""
    messages = [ChatMessage(role="system", content=instructions)] if instructions else []
    called: set[str] = set()
    answered: set[str] = set()
    open_turn: ChatMessage | None = None  # the assistant turn calls join
    for n, item in enumerate(items):
        where = f"input[{n - first_new}]" if n >= first_new else "previous_response_id's history"
        if isinstance(item, MessageItem):
            message = ChatMessage(role=item.role, content=item.text())
            open_turn = message if item.role == "assistant" else None
        elif isinstance(item, FunctionCallItem):
            if item.call_id in called:
                raise InvalidParameter(f"{where}: call_id {item.call_id!r} is used by an earlier function_call",
                                       "input")
            called.add(item.call_id)
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            if open_turn is not None:
                open_turn.tool_calls = [*(open_turn.tool_calls or []), call]
                continue
            message = open_turn = ChatMessage(role="assistant", content=None, tool_calls=[call])
        else:
            if item.call_id not in called:
                raise InvalidParameter(f"{where}: function_call_output answers call_id {item.call_id!r}, which no "
                                       "earlier function_call made", "input")
            if item.call_id in answered:
                raise InvalidParameter(f"{where}: call_id {item.call_id!r} is answered twice", "input")
            answered.add(item.call_id)
            message, open_turn = ChatMessage(role="tool", content=item.text(), tool_call_id=item.call_id), None
        messages.append(message)
    return messages


def text_chars(instructions: str | None, items: list[Item]) -> int:
    """The characters of text the conversation holds, bounded before it is tokenised."""
    total = len(instructions or "")
    for item in items:
        if isinstance(item, MessageItem):
            total += len(item.text())
        elif isinstance(item, FunctionCallItem):
            total += len(item.name) + len(item.arguments)
        else:
            total += len(item.text())
    return total

"""The Responses API's objects: the `response` with every field the OpenAI SDK's type declares, its output items
(a `message` with `output_text`, or a `function_call`: a call is never text), its usage, and the ids they carry.

Plain dicts, rendered by orjson, as chat's choices are (server/pipeline/render.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

# finish reasons (chat's, server/pipeline/render.py) -> a response's status
_COMPLETED = {"stop", "tool_calls", None}


def new_id(prefix: str) -> str:
    """`prefix` and 32 random hex digits (uuid4's randomness without building a UUID: three per request)."""
    return prefix + os.urandom(16).hex()


@dataclass
class ResponseDraft:
    """What a response echoes of its request, decided at the gate, and the whole input the model saw (items with
    ids: a `previous_response_id` chain replayed, then this request's own), which the store keeps with it."""

    id: str
    model: str
    owner: str | None  # the creating key's id; None on a server without keys
    input_items: list[dict[str, Any]]
    echoed: dict[str, Any]  # request fields a response repeats (instructions, tools, text, ...)
    store: bool = True
    background: bool = False
    logprobs: bool = False  # include names message.output_text.logprobs
    created_at: float = field(default_factory=time.time)


def response_object(draft: ResponseDraft, status: str, output: list[dict[str, Any]] | None = None,
                    usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                    incomplete_reason: str | None = None) -> dict[str, Any]:
    finished = status in ("completed", "incomplete", "failed", "cancelled")
    return {
        "id": draft.id,
        "object": "response",
        "created_at": int(draft.created_at),
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "background": draft.background,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "model": draft.model,
        "output": output if output is not None else [],
        "usage": usage if finished else None,
        "store": draft.store,
        **draft.echoed,
        "conversation": None,
        "max_tool_calls": None,
        "prompt": None,
        "prompt_cache_retention": None,
        "reasoning": None,
        "service_tier": "default",
        "top_logprobs": draft.echoed.get("top_logprobs"),
    }


def usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    """Chat's usage (server/pipeline/render.py `usage`) under the Responses API's names."""
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": chat_usage["prompt_tokens_details"]["cached_tokens"],
                                 "cache_write_tokens": 0},
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": chat_usage["total_tokens"],
    }


def status_of(finish_reason: str | None) -> tuple[str, str | None]:
    """A response's status and incomplete reason for its choice's finish reason."""
    if finish_reason in _COMPLETED or finish_reason == "content_filter_error":
        return "completed", None
    if finish_reason == "content_filter":
        return "failed", None
    return "incomplete", "max_output_tokens"


def content_filter_error(results: dict[str, Any] | None) -> dict[str, Any]:
    """A failed response's error when the guard blocked its output or its input."""
    return {"code": "content_filter", "message": "The response was filtered by the content safety policy.",
            **({"content_filter_results": results} if results is not None else {})}


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [text_part(text, logprobs)]}


def text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def output_items(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat choice (server/pipeline/render.py) as output items: its text as a message, each call an item."""
    message, calls = choice["message"], choice["message"].get("tool_calls") or []
    item_status = "incomplete" if status_of(choice["finish_reason"])[0] == "incomplete" else "completed"
    items = []
    if message.get("content") or not calls:
        logprobs = (choice.get("logprobs") or {}).get("content")
        items.append(message_item(new_id("msg_"), message.get("content") or "", item_status, logprobs))
    for call in calls:
        items.append(call_item(new_id("fc_"), call["id"], call["function"]["name"], call["function"]["arguments"],
                               item_status))
    return items

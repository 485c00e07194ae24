"""A JSON tool call read out of model output: `{"name": f, "parameters": {...}}` and the forms Llama also writes.

Model output may nest as deep as it likes: Python's json recurses once per level, so over-deep text is no call
(it stays content) rather than an error.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.json_depth import MAX_JSON_DEPTH, text_deeper_than
from server.pipeline.tools.events import ParsedCall

_DECODER = json.JSONDecoder()


def skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def string_end(text: str, i: int) -> int | None:
    """Index after the JSON string opening at text[i], or None when it has not closed yet."""
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return None


def _members(text: str, i: int) -> dict[str, tuple[Any, int, int]] | None:
    """The members of the JSON object at text[i:] with each value's span, or None when it is not one object."""
    try:
        if text[i] != "{":
            return None
        out: dict[str, tuple[Any, int, int]] = {}
        i = skip_space(text, i + 1)
        if text[i] == "}":
            return out if skip_space(text, i + 1) == len(text) else None
        while True:
            if text[i] != '"':
                return None
            key, i = _DECODER.raw_decode(text, i)
            i = skip_space(text, i)
            if text[i] != ":":
                return None
            start = skip_space(text, i + 1)
            value, end = _DECODER.raw_decode(text, start)
            out[key] = (value, start, end)
            i = skip_space(text, end)
            if text[i] == ",":
                i = skip_space(text, i + 1)
            elif text[i] == "}":
                return out if skip_space(text, i + 1) == len(text) else None
            else:
                return None
    except (ValueError, IndexError):
        return None


def json_call(text: str, names: frozenset[str]) -> ParsedCall | None:
    if text_deeper_than(text, MAX_JSON_DEPTH):
        return None
    members = _members(text, 0)
    if members is None:
        return None
    if "function" in members and isinstance(members["function"][0], dict):  # {"type": "function", "function": {...}}
        _, start, end = members["function"]
        text, members = text[start:end], _members(text[start:end], 0) or {}
    name = members.get("name", (None,))[0]
    if not isinstance(name, str) or name not in names:
        return None
    found = members.get("parameters") or members.get("arguments")
    if found is None:
        return None
    value, start, end = found
    if isinstance(value, str):  # arguments sent as a JSON string, OpenAI style
        if text_deeper_than(value, MAX_JSON_DEPTH):
            return None
        try:
            inner = json.loads(value)
        except ValueError:
            return None
        return ParsedCall(name, value) if isinstance(inner, dict) else None
    if not isinstance(value, dict):
        return None
    return ParsedCall(name, text[start:end])  # the model's own text of the arguments

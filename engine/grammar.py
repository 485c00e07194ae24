"""Grammars the output must match, compiled by xgrammar (the structured-output backend vLLM uses).

Every structured answer is strict JSON in Llama's own spacing (`{"a": 1, "b": [2, 3]}`: one space after each `:`
and `,`, no other whitespace, the way Meta's templates render JSON). Free whitespace, vLLM's default, lets a weak
or random-weight model write blanks until max_tokens; and strict JSON has no raw control character (U+0000-U+001F)
anywhere, since compact JSON needs none outside strings and strings must escape them.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from engine.errors import InvalidGenerationRequest

# xgrammar (0.2.x) writes the characters of a string with minLength or maxLength as this class, which lets raw
# control characters through (its unbounded strings exclude them). The replacement excludes them too; backslash
# stays excluded, as xgrammar has it, so such a string holds no escapes.
_LENGTH_BOUNDED_CHARACTER = r'[^\"\\\r\n]'
_STRICT_CHARACTER = r'[^\0-\x1f\"\\]'

# A regex escape outside a character class that stands for a control character: a pattern naming one asks for a
# raw control character in the JSON string, which xgrammar writes unescaped (inside classes it drops them).
_CONTROL_ESCAPE = re.compile(r"\\(?:[nrtfva0e]|c[A-Za-z]|x[01][0-9A-Fa-f]|u00[01][0-9A-Fa-f]|x\{0*[01]?[0-9A-Fa-f]\})")


def strict_json_grammar(schema: dict[str, Any], param: str) -> str:
    """The schema as an xgrammar EBNF grammar for strict, compact JSON. `param` is the request parameter that
    holds the schema, named when the schema cannot be enforced."""
    import xgrammar  # here, not at the top: it imports torch, which commands like `llamaserve keygen` never need

    _check_patterns(schema, param)
    try:
        grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
    except RuntimeError as exc:
        raise InvalidGenerationRequest(f"{param}: the schema cannot be enforced as a JSON schema: {exc}", param) from exc
    return str(grammar).replace(_LENGTH_BOUNDED_CHARACTER, _STRICT_CHARACTER)


@functools.cache
def json_object_grammar() -> str:
    """Any JSON object, strict and compact: response_format json_object."""
    return strict_json_grammar({"type": "object", "additionalProperties": True}, "response_format")


def _check_patterns(schema: Any, param: str) -> None:
    """Refuses a `pattern`, `patternProperties` key or `propertyNames` pattern that names a control character."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns += list(node["patternProperties"])
        for pattern in patterns:
            if _names_a_control_character(pattern):
                raise InvalidGenerationRequest(
                    f"{param}: the pattern {pattern[:80]!r} asks for a control character, which a JSON string "
                    "must escape and structured output cannot write escaped", param)
        stack.extend(node.values())


def _names_a_control_character(pattern: str) -> bool:
    if any(ord(c) < 0x20 for c in pattern):
        return True
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if not in_class and _CONTROL_ESCAPE.match(pattern, i):
                return True
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        i += 1
    return False

"""How deep JSON nests, measured without recursion: Python's json, deepcopy and Jinja's tojson recurse once (or
more) per level and fail past about a thousand levels, so over-deep input is refused before any of them sees it."""

from __future__ import annotations

import re
from typing import Any

# The deepest JSON a request may hold in a tool call's arguments or a schema document. Far above what a real
# call or schema uses, far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64
_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_ONE_KIND = str.maketrans("{}", "[]")


def text_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of a JSON text (valid or not) nest deeper than `limit`; brackets inside
    strings do not count. Each pass peels the innermost level at C speed, so a long text costs milliseconds."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text)).translate(_ONE_KIND)
    for _ in range(limit):
        peeled = brackets.replace("[]", "")
        if peeled == brackets:
            return False
        brackets = peeled
    return "[]" in brackets


def value_depth(value: Any) -> int:
    """The nesting depth of the dicts and lists in a parsed JSON value."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest

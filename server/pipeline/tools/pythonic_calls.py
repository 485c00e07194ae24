"""Pythonic tool calls read out of model output: `[f(a=1), g(b="x")]` (Llama 3.2 1B/3B, Llama 4).

Only literals are read, never evaluated. Output nested past what the reader can recurse into is no call (it stays
content) rather than an error.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from server.pipeline.tools.events import ParsedCall

_PY_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def pythonic_calls(text: str, names: frozenset[str]) -> list[ParsedCall] | None:
    """`[f(a=1), g(b="x")]` as calls; None unless every element is a declared function with literal keywords."""
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # the last two: nested past the parser's reach
        return None
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls = []
    for node in tree.elts:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
            return None
        if node.func.id not in names:
            return None
        args = {}
        for kw in node.keywords:
            if kw.arg is None:
                return None
            try:
                args[kw.arg] = _literal(kw.value)
            except (ValueError, RecursionError):  # _literal recurses once per level, as deep as the model nests
                return None
        calls.append(ParsedCall(node.func.id, json.dumps(args, ensure_ascii=False)))
    return calls


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _PY_NAMES:
        return _PY_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            key = None if k is None else _literal(k)
            if not isinstance(key, str):
                raise ValueError("dict keys must be strings")
            out[key] = _literal(v)
        return out
    raise ValueError(f"not a literal: {ast.dump(node)}")

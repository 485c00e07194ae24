"""Grammars the output must match, compiled by xgrammar (the structured-output backend vLLM uses)."""

from __future__ import annotations

import json
from typing import Any

from engine.errors import InvalidGenerationRequest


def llama_json_grammar(schema: dict[str, Any]) -> str:
    """The schema as a grammar for JSON written the way Llama writes it (and Meta's templates render it):
    `{"a": 1, "b": [2, 3]}`, one space after each `:` and `,` and nowhere else. Free whitespace, the default of
    a json schema request, lets a weak or random-weight model write blanks until max_tokens."""
    import xgrammar  # here, not at the top: it imports torch, which commands like `llamaserve keygen` never need

    try:
        return str(xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": ")))
    except RuntimeError as exc:
        raise InvalidGenerationRequest(f"a tool's parameters cannot be enforced as a JSON schema: {exc}", "tools") from exc

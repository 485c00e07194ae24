"""The JSON schema that structured output enforces for tool_choice required or a named function.

It is the Llama 3.1 call shape, `{"name": <the function>, "parameters": <its arguments>}`, with the function's
own parameters schema inside: whatever the model, the answer then parses and its arguments match the schema.
With several tools under `required`, an anyOf of one such shape per tool. One call per answer: Llama 3.1 makes
one call per turn in this format, and a single object keeps the grammar small.
"""

from __future__ import annotations

from typing import Any

from schemas.tools import Tool

# OpenAI's reading of a function without `parameters`: it takes none.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def parameters_of(tool: Tool) -> dict[str, Any]:
    params = tool.function.parameters
    if params is None:
        return NO_PARAMETERS
    # Arguments are an object even when the schema leaves the type open (`{}` would allow `"parameters": 5`).
    return params if "type" in params else {"type": "object", **params}


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    shapes = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "parameters": parameters_of(t)},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}

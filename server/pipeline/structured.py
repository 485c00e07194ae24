"""Structured output: the grammar a request's answer must match (response_format, or a forced tool call).

Schemas are held to OpenAI's documented limits for structured outputs before any work is done for them, and the
grammar is built in a worker thread within `grammar_timeout_s`, so that no schema stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.errors import InvalidGenerationRequest
from engine.grammar import json_object_grammar, strict_json_grammar
from engine.request import StructuredOutput
from schemas import GenerationRequest
from schemas.json_depth import MAX_JSON_DEPTH, value_depth
from server.errors import APIError, InvalidParameter
from server.observe import tracing

# OpenAI's limits on structured-output schemas.
MAX_PROPERTIES = 5000  # object properties, in total
MAX_NESTING = 10  # levels of objects and arrays below the root
MAX_ENUM_VALUES = 1000  # across all enums
MAX_SCHEMA_CHARS = 120_000  # property names, definition names, enum and const values, in total
LARGE_ENUM_VALUES = 250  # a string enum with more values than this ...
MAX_LARGE_ENUM_CHARS = 15_000  # ... holds at most this many characters

# Keywords whose value is a subschema (or a list or name -> subschema map) one level of nesting down.
_NESTING_ONE = {"items": "schema", "additionalItems": "schema", "additionalProperties": "schema",
                "unevaluatedProperties": "schema", "unevaluatedItems": "schema", "contains": "schema",
                "propertyNames": "schema", "prefixItems": "list", "properties": "map", "patternProperties": "map"}
# ... and on the same level: alternatives, conditions, definitions.
_NESTING_SAME = {"anyOf": "list", "oneOf": "list", "allOf": "list", "not": "schema", "if": "schema",
                 "then": "schema", "else": "schema", "$defs": "map", "definitions": "map", "dependentSchemas": "map"}

# Few threads: a build is CPU work, and one that runs long must not take every thread from the others.
_BUILDERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar")
# An application sends the same few schemas again and again: each is built once (property order kept in the key,
# since it orders the answer's keys). Bounded, least recently used out first.
_GRAMMARS: OrderedDict[tuple[str, str], str] = OrderedDict()
GRAMMAR_CACHE_SIZE = 256


def check_schemas(schemas: list[dict[str, Any]], param: str) -> None:
    """400 naming `param` and the limit when the schemas, together, pass one of OpenAI's limits."""
    for schema in schemas:
        if value_depth(schema) > MAX_JSON_DEPTH:
            raise InvalidParameter(f"{param}: a schema nests deeper than {MAX_JSON_DEPTH} levels of JSON", param,
                                   "schema_too_deep")
    properties = enum_values = chars = 0
    stack: list[tuple[Any, int]] = [(schema, 0) for schema in schemas]
    while stack:
        node, level = stack.pop()
        if not isinstance(node, dict):
            continue
        if level > MAX_NESTING:
            raise InvalidParameter(f"{param}: a schema nests objects and arrays more than {MAX_NESTING} levels deep",
                                   param, "schema_too_deep")
        for key, kinds in ((k, _NESTING_ONE.get(k) or _NESTING_SAME.get(k)) for k in node):
            value = node[key]
            down = level + 1 if key in _NESTING_ONE else level
            if kinds == "schema":
                stack.append((value, down))
            elif kinds == "list" and isinstance(value, list):
                stack.extend((item, down) for item in value)
            elif kinds == "map" and isinstance(value, dict):
                stack.extend((item, down) for item in value.values())
                if key in ("properties", "$defs", "definitions"):
                    chars += sum(len(name) for name in value)
                if key == "properties":
                    properties += len(value)
        enum = node.get("enum")
        if isinstance(enum, list):
            enum_values += len(enum)
            strings = sum(len(v) for v in enum if isinstance(v, str))
            chars += strings
            if len(enum) > LARGE_ENUM_VALUES and strings > MAX_LARGE_ENUM_CHARS:
                raise InvalidParameter(f"{param}: a string enum of over {LARGE_ENUM_VALUES} values holds {strings} "
                                       f"characters, more than the limit of {MAX_LARGE_ENUM_CHARS}", param,
                                       "schema_too_large")
        if isinstance(node.get("const"), str):
            chars += len(node["const"])
    for count, limit, what in ((properties, MAX_PROPERTIES, "object properties"),
                               (enum_values, MAX_ENUM_VALUES, "enum values"),
                               (chars, MAX_SCHEMA_CHARS, "characters of property names, definition names, enum "
                                                         "and const values")):
        if count > limit:
            raise InvalidParameter(f"{param}: the schemas hold {count} {what}, more than the limit of {limit}", param,
                                   "schema_too_large")


async def structured_output(req: GenerationRequest, tool_schema: dict[str, Any] | None,
                            timeout_s: float) -> StructuredOutput | None:
    """The grammar for the request's answer: `tool_schema`, the call shape of a forced tool call (its tools'
    schemas already checked), else response_format's; None for free text."""
    if tool_schema is not None:
        return StructuredOutput(grammar=await _build(tool_schema, "tools", timeout_s))
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput(grammar=json_object_grammar())
    assert fmt.json_schema is not None
    schema = fmt.json_schema.json_schema
    check_schemas([schema], "response_format")
    return StructuredOutput(grammar=await _build(schema, "response_format", timeout_s))


async def _build(schema: dict[str, Any], param: str, timeout_s: float) -> str:
    with tracing.span("structured_output.grammar", {"llamaserve.grammar.for": param}):
        return await _cached_or_built(schema, param, timeout_s)


async def _cached_or_built(schema: dict[str, Any], param: str, timeout_s: float) -> str:
    key = (param, json.dumps(schema, separators=(",", ":")))
    cached = key in _GRAMMARS
    tracing.annotate({"llamaserve.grammar.cached": cached})
    if cached:
        _GRAMMARS.move_to_end(key)
        return _GRAMMARS[key]
    grammar = await _build_in_a_worker(schema, param, timeout_s)
    _GRAMMARS[key] = grammar
    while len(_GRAMMARS) > GRAMMAR_CACHE_SIZE:
        _GRAMMARS.popitem(last=False)
    return grammar


async def _build_in_a_worker(schema: dict[str, Any], param: str, timeout_s: float) -> str:
    started = threading.Event()

    def build() -> str:
        started.set()
        return strict_json_grammar(schema, param)

    try:
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(_BUILDERS, build), timeout_s)
    except InvalidGenerationRequest as exc:
        raise InvalidParameter(exc.message, exc.param) from exc
    except TimeoutError:
        if started.is_set():
            raise InvalidParameter(f"{param}: the schema's grammar took more than {timeout_s:g} s to build; simplify "
                                   "the schema", param, "schema_too_complex") from None
        raise APIError(503, "structured-output grammars are all being built; retry shortly",
                       code="grammar_builders_busy", headers={"retry-after": "1"}) from None

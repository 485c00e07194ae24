"""The grammar a forced tool call is generated under: the declared schema, in Llama's own JSON spacing."""

from __future__ import annotations

import pytest
from xgrammar.testing import _is_grammar_accept_string as accepts

from engine.errors import InvalidGenerationRequest
from engine.grammar import llama_json_grammar
from server.tools.schema import call_schema
from schemas.tools import Tool

WEATHER = Tool.model_validate({"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Lima"]}, "days": {"type": "array", "items": {"type": "integer"}}},
    "required": ["city"], "additionalProperties": False}}})
TIME = Tool.model_validate({"type": "function", "function": {"name": "get_time"}})


def test_calls_in_llamas_spacing_are_the_only_ones_allowed():
    grammar = llama_json_grammar(call_schema([WEATHER, TIME]))
    assert accepts(grammar, '{"name": "get_weather", "parameters": {"city": "Paris", "days": [1, 2]}}')
    assert accepts(grammar, '{"name": "get_time", "parameters": {}}')
    for text in [
        '{"name":"get_weather","parameters":{"city":"Paris"}}',  # other spacing
        '{"name": "get_weather", "parameters": {"city": "Paris"}}\n\n',  # blanks after the call
        '{"name": "get_weather", "parameters": {"city": "Rome"}}',  # not in the enum
        '{"name": "get_weather", "parameters": {"city": "Paris", "extra": 1}}',  # undeclared argument
        '{"name": "search", "parameters": {}}',  # undeclared function
        '{"name": "get_weather", "parameters": {}}',  # a required argument missing
    ]:
        assert not accepts(grammar, text), text


def test_a_schema_the_grammar_cannot_express_is_the_callers_error():
    with pytest.raises(InvalidGenerationRequest) as info:
        llama_json_grammar({"type": "object", "properties": {"a": {"type": "no-such-type"}}})
    assert info.value.param == "tools"

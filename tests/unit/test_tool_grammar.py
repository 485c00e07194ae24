"""The grammar a forced tool call is generated under: the declared schema, in Llama's own JSON spacing."""

from __future__ import annotations

import pytest
from xgrammar.testing import _is_grammar_accept_string as accepts

from engine.errors import InvalidGenerationRequest
from engine.grammar import json_object_grammar, strict_json_grammar
from server.pipeline.tools.schema import call_schema
from schemas.tools import Tool

WEATHER = Tool.model_validate({"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Lima"]}, "days": {"type": "array", "items": {"type": "integer"}}},
    "required": ["city"], "additionalProperties": False}}})
TIME = Tool.model_validate({"type": "function", "function": {"name": "get_time"}})


def test_calls_in_llamas_spacing_are_the_only_ones_allowed():
    grammar = strict_json_grammar(call_schema([WEATHER, TIME]), "tools")
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
        strict_json_grammar({"type": "object", "properties": {"a": {"type": "no-such-type"}}}, "tools")
    assert info.value.param == "tools"


# --- every structured answer is strict JSON: no raw control characters, no free whitespace

STRING_KINDS = [{"type": "string"}, {"type": "string", "maxLength": 12}, {"type": "string", "minLength": 1},
                {"type": "string", "minLength": 1, "maxLength": 3}, {"type": "string", "pattern": "[a-z ]+"},
                {"type": "string", "pattern": "[\\x00-\\x7f]+"}]


@pytest.mark.parametrize("string", STRING_KINDS)
def test_no_string_schema_lets_a_raw_control_character_through(string):
    grammar = strict_json_grammar({"type": "object", "properties": {"s": string}, "required": ["s"]}, "response_format")
    assert accepts(grammar, '{"s": "ab"}')
    for code in range(0x20):
        assert not accepts(grammar, '{"s": "a' + chr(code) + 'b"}'), (string, code)


def test_json_object_is_any_object_in_llamas_spacing_without_control_characters():
    grammar = json_object_grammar()
    assert accepts(grammar, '{"a": [1, {"b": null}], "c": "d\\ne"}')
    assert accepts(grammar, "{}")
    for text in ['{"a":1}', '{ "a": 1}', '{"a": 1}\n', '{"a": 1,\n"b": 2}', '[1, 2]', '{"a": "x\ny"}', '{"a": "\x01"}']:
        assert not accepts(grammar, text), text


def test_a_json_schema_has_no_free_whitespace():
    grammar = strict_json_grammar({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                                  "response_format")
    assert accepts(grammar, '{"a": 1}')
    for text in ['{"a":1}', '{ "a": 1}', '{"a": 1} ', '{"a":\n1}', '{\t"a": 1}']:
        assert not accepts(grammar, text), text


@pytest.mark.parametrize("pattern", ["a\\nb", "\\t", "x\\x01", "\\u001f", "a\x02"])
def test_a_pattern_that_asks_for_a_control_character_is_refused(pattern):
    with pytest.raises(InvalidGenerationRequest) as info:
        strict_json_grammar({"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}},
                            "response_format")
    assert info.value.param == "response_format" and "control character" in info.value.message


@pytest.mark.parametrize("pattern", ["[\\n\\t a-z]+", "\\\\n", "\\s+\\S", "\\d{3}"])
def test_patterns_without_a_control_character_of_their_own_are_kept(pattern):
    strict_json_grammar({"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}}, "tools")

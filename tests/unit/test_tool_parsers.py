"""The tool-call parsers on what each Llama family really writes, whole and streamed in any chunking.

Cases from peers' trackers: text before a call (vLLM #22917), several calls (#9451, #11592), 3.2 writing pythonic
(#9991), Llama 4 tags leaking (#16214), streamed arguments cut (#9693, #21046, #15274).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.pipeline.tools.parsers import (
    CallArguments,
    CallParser,
    CallStart,
    Content,
    ForcedCallParser,
    Parsed,
    ParsedCall,
    collect,
    parse,
)

NAMES = frozenset({"get_weather", "search", "get_time"})


def auto(text: str, *, pythonic: bool = True, max_calls: int | None = None) -> Parsed:
    return parse(CallParser(NAMES, pythonic=pythonic, max_calls=max_calls), text)


def streamed(parser, pieces: list[str]) -> tuple[Parsed, list]:
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    return collect(events), events


def by_char(text: str, **kw) -> Parsed:
    return streamed(CallParser(NAMES, **kw), list(text))[0]


def call(name: str, **args) -> ParsedCall:
    return ParsedCall(name, json.dumps(args, ensure_ascii=False))


# (model output, expected content, expected calls); arguments compared as JSON values
CASES = [
    # Llama 3.1 8B with Environment: ipython: the tag, then the JSON call
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "San Francisco, CA", "unit": "fahrenheit"}}',
     None, [("get_weather", {"city": "San Francisco, CA", "unit": "fahrenheit"})]),
    # the tag hidden by skip_special_tokens
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    # Llama 3.3 70B sometimes adds "type" and says "arguments"
    ('{"type": "function", "name": "search", "arguments": {"q": "llamas"}}', None, [("search", {"q": "llamas"})]),
    ('{"type": "function", "function": {"name": "search", "parameters": {"q": "x"}}}', None, [("search", {"q": "x"})]),
    # text before a call
    ("I'll look that up for you.\n\n{\"name\": \"search\", \"parameters\": {\"q\": \"vLLM\"}}",
     "I'll look that up for you.", [("search", {"q": "vLLM"})]),
    # several JSON calls, separated by ; or new lines
    ('{"name": "get_weather", "parameters": {"city": "Lima"}}; {"name": "get_time", "parameters": {"tz": "PET"}}',
     None, [("get_weather", {"city": "Lima"}), ("get_time", {"tz": "PET"})]),
    ('{"name": "get_weather", "parameters": {"city": "Lima"}}\n{"name": "get_weather", "parameters": {"city": "Oslo"}}',
     None, [("get_weather", {"city": "Lima"}), ("get_weather", {"city": "Oslo"})]),
    # arrays, nested objects, unicode, braces inside strings
    ('{"name": "search", "parameters": {"q": "Zürich {or} 東京 🦙", "filters": {"tags": ["a", "b"], '
     '"range": {"min": -1.5, "max": null}}, "exact": true}}',
     None, [("search", {"q": "Zürich {or} 東京 🦙", "filters": {"tags": ["a", "b"], "range": {"min": -1.5, "max": None}},
                        "exact": True})]),
    # arguments as a JSON string
    ('{"name": "search", "parameters": "{\\"q\\": \\"x\\"}"}', None, [("search", {"q": "x"})]),
    # Llama 3.2 1B/3B: pythonic
    ("[get_weather(city='San Francisco', metric='celsius'), get_time(tz=\"PST\")]",
     None, [("get_weather", {"city": "San Francisco", "metric": "celsius"}), ("get_time", {"tz": "PST"})]),
    ("[search(q='x', limit=-3, tags=['a', 'b'], opts={'deep': True, 'n': None})]",
     None, [("search", {"q": "x", "limit": -3, "tags": ["a", "b"], "opts": {"deep": True, "n": None}})]),
    ("Let me check. [get_weather(city='Oslo')]", "Let me check.", [("get_weather", {"city": "Oslo"})]),
    # Llama 4: pythonic inside its tags, or bare
    ('<|python_start|>[get_weather(city="Tokyo")]<|python_end|>', None, [("get_weather", {"city": "Tokyo"})]),
    ('[get_weather(city="東京"), search(q="ramen")]', None, [("get_weather", {"city": "東京"}), ("search", {"q": "ramen"})]),
    # not calls: everything stays content, byte for byte
    ('{"name": "delete_everything", "parameters": {}}', '{"name": "delete_everything", "parameters": {}}', []),
    ('{"name": "get_weather", "parameters": {"city": "Paris",}}', '{"name": "get_weather", "parameters": {"city": "Paris",}}', []),
    ('{"name": "get_weather", "parameters": {"city": "Par', '{"name": "get_weather", "parameters": {"city": "Par', []),
    ('{"name": "get_weather", "parameters": ["Paris"]}', '{"name": "get_weather", "parameters": ["Paris"]}', []),
    ('{"answer": 42, "unit": "m"}', '{"answer": 42, "unit": "m"}', []),
    ("[1, 2, 3] are {odd} numbers < 4.", "[1, 2, 3] are {odd} numbers < 4.", []),
    ("[unknown_tool(a=1)]", "[unknown_tool(a=1)]", []),
    ("[get_weather('Paris')]", "[get_weather('Paris')]", []),  # positional arguments have no names
    ("[get_weather(city=os.environ)]", "[get_weather(city=os.environ)]", []),  # not a literal
    ('<|python_tag|>brave_search.call(query="llamas")', '<|python_tag|>brave_search.call(query="llamas")', []),
    ("Hello, world.\n", "Hello, world.\n", []),
    ("", None, []),
]


def expected(content, calls) -> tuple:
    return content, [(n, a) for n, a in calls]


def observed(parsed: Parsed) -> tuple:
    return parsed.content, [(c.name, json.loads(c.arguments)) for c in parsed.calls]


@pytest.mark.parametrize("text,content,calls", CASES)
def test_whole_output(text, content, calls):
    assert observed(auto(text)) == expected(content, calls)


@pytest.mark.parametrize("text,content,calls", CASES)
def test_token_by_token_gives_the_same_answer(text, content, calls):
    assert by_char(text) == auto(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([c[0] for c in CASES]), st.data())
def test_any_chunking_gives_the_same_answer(text, data):
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert streamed(CallParser(NAMES), pieces)[0] == auto(text)


def test_json_calls_keep_the_models_own_argument_text():
    text = '{"name": "search", "parameters": {"q":"a",  "n": 1.50}}'
    assert auto(text).calls == [ParsedCall("search", '{"q":"a",  "n": 1.50}')]


def test_llama3_json_format_leaves_python_syntax_as_content():
    text = "[get_weather(city='Oslo')]"
    assert auto(text, pythonic=False) == Parsed(text, [])
    # ...but Llama 4's tags still mark a call
    assert auto('<|python_start|>[get_weather(city="Oslo")]<|python_end|>', pythonic=False).calls == [
        call("get_weather", city="Oslo")
    ]


def test_parallel_tool_calls_false_keeps_the_first_call_only():
    two = '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "search", "parameters": {"q": "b"}}'
    assert auto(two, max_calls=1) == Parsed(None, [call("get_weather", city="A")])
    assert auto("[get_weather(city='A'), search(q='b')]", max_calls=1).calls == [call("get_weather", city="A")]


def test_no_call_text_reaches_content_while_streaming():
    text = 'Checking.\n{"name": "get_weather", "parameters": {"city": "Paris"}}'
    _, events = streamed(CallParser(NAMES), list(text))
    content = "".join(e.text for e in events if isinstance(e, Content))
    assert content == "Checking."
    assert [type(e) for e in events if not isinstance(e, Content)] == [CallStart, CallArguments]


def test_content_streams_without_waiting_for_the_end():
    parser = CallParser(NAMES)

    def text(events):
        assert all(isinstance(e, Content) for e in events)
        return "".join(e.text for e in events)

    assert text(parser.feed("The answer is")) == "The answer is"
    assert text(parser.feed(" {")) == ""  # might open a call
    assert text(parser.feed("x")) == " {x"  # cannot: `{` then not a key
    assert text(parser.feed(' and {"answer": 1')) == ' and {"answer": 1'  # a first key no call has


def test_a_possible_call_is_held_until_decided():
    parser = CallParser(NAMES)
    assert parser.feed('{"name": "get_weather", "parameters": {"city": "Pa') == []
    assert parser.feed('ris"}}') == [CallStart("get_weather"), CallArguments('{"city": "Paris"}')]
    assert parser.finish() == []


FORCED = '{"name": "search", "parameters": {"q": "a}b\\"c", "n": [1, {"x": 2}]}}'


def test_forced_call_streams_its_arguments_as_they_come():
    parser = ForcedCallParser(NAMES)
    assert parser.feed('{"name": "search", "parameters"') == []
    assert parser.feed(': {"q"') == [CallStart("search"), CallArguments('{"q"')]
    assert parser.feed(': "x"') == [CallArguments(': "x"')]
    assert parser.feed("}}") == [CallArguments("}")]  # the call's own closing brace is not arguments
    assert parser.finish() == []


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_forced_call_in_any_chunking(data):
    cuts = sorted(data.draw(st.sets(st.integers(0, len(FORCED)), max_size=10)))
    pieces = [FORCED[a:b] for a, b in zip([0, *cuts], [*cuts, len(FORCED)])]
    parsed, events = streamed(ForcedCallParser(NAMES), pieces)
    assert parsed == Parsed(None, [ParsedCall("search", '{"q": "a}b\\"c", "n": [1, {"x": 2}]}')])
    assert sum(isinstance(e, CallStart) for e in events) == 1


def test_forced_call_cut_by_max_tokens_keeps_what_was_generated():
    assert parse(ForcedCallParser(NAMES), '{"name":"search","parameters":{"q":"ab') == Parsed(
        None, [ParsedCall("search", '{"q":"ab')]
    )


def test_forced_call_in_another_key_order_is_read_whole():
    text = '{"parameters": {"city": "Rome"}, "name": "get_weather"}'
    assert parse(ForcedCallParser(NAMES), text) == Parsed(None, [call("get_weather", city="Rome")])


@pytest.mark.parametrize("text", [
    "[get_weather(city=" + "-" * 1500 + "1)]",
    '{"name": "get_weather", "parameters": {"city": ' + "[" * 1200 + "]" * 1200 + "}}",
    '{"name": "get_weather", "arguments": "' + "[" * 1200 + "]" * 1200 + '"}',
    "[get_weather(city=" + "[" * 1200 + "]" * 1200 + ")]",
])
def test_output_nested_past_what_the_readers_recurse_into_is_content(text):
    assert observed(auto(text)) == (text, [])
    assert observed(by_char(text)) == (text, [])


def test_a_forced_call_nested_too_deep_to_read_whole_is_content():
    text = '{"parameters": {"city": ' + "[" * 1200 + "]" * 1200 + '}, "name": "get_weather"}'
    assert observed(parse(ForcedCallParser(NAMES), text)) == (text, [])

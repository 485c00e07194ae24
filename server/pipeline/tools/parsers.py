"""Reading tool calls out of Llama output, whole or as it streams. Pure text logic: no engine, no HTTP.

One incremental machine per mode serves both cases: a whole output is fed in one piece and finished, so a
streamed answer and a non-streamed one are the same answer by construction.

`CallParser` (tool_choice auto) finds calls anywhere in the text, the way every Llama family writes them:
- JSON (Llama 3.1 / 3.3, also 3.2 and 4 when prompted by Meta's templates): `{"name": f, "parameters": {...}}`
  (or `"arguments"`, or `{"type": "function", "function": {...}}`), maybe after `<|python_tag|>`, several in a
  row separated by `;` or new lines;
- pythonic (Llama 3.2 1B/3B, Llama 4): `[f(a=1), g(b="x")]`, maybe inside `<|python_start|>...<|python_end|>`.
A call counts only when its name is declared and its arguments parse as an object; anything else stays content.
Text that might start a call is held back until that is decided, so no call text leaks into content.

`ForcedCallParser` (tool_choice required or named) reads the one JSON call that structured output guarantees,
streaming the arguments as they are generated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from server.pipeline.tools.events import CallArguments, CallStart, Content, Event, Parsed, ParsedCall, collect
from server.pipeline.tools.json_calls import json_call, skip_space, string_end
from server.pipeline.tools.pythonic_calls import pythonic_calls

PYTHON_TAG = "<|python_tag|>"  # Llama 3.x: what follows is a tool call
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"  # Llama 4
_TAGS = (PYTHON_TAG, PYTHON_START, PYTHON_END)
# Between and after calls, these carry no content (Llama 3.1 separates several JSON calls with `;`).
_SEPARATORS = " \t\r\n;,"
# First keys a JSON call may open with; any other first key means the object is not a call.
_CALL_KEYS = frozenset({"name", "type", "function", "parameters", "arguments"})


def parse(parser: CallParser | ForcedCallParser, text: str) -> Parsed:
    return collect(parser.feed(text) + parser.finish())


# Outcomes of looking at a possible call start.
_UNDECIDED = None


@dataclass(frozen=True, slots=True)
class _NotACall:
    end: int  # text up to here is content


@dataclass(frozen=True, slots=True)
class _Calls:
    calls: list[ParsedCall]
    end: int


class CallParser:
    """tool_choice auto: content and calls, in order, from text that arrives in pieces."""

    def __init__(self, names: frozenset[str], *, pythonic: bool = True, max_calls: int | None = None):
        self._names = names
        self._pythonic = pythonic
        self._max_calls = max_calls
        self._text = ""
        self._pos = 0  # everything before it has been decided
        self._held = ""  # separators not yet known to be content
        self._calls = 0
        self._scan: _Scan | None = None  # the bracket scan of the candidate being held

    def feed(self, text: str) -> list[Event]:
        self._text += text
        return self._advance(final=False)

    def _closing(self, pos: int, quotes: str) -> int | None:
        if self._scan is None or self._scan.start != pos:
            self._scan = _Scan(pos, pos)
        return _closing(self._text, self._scan, quotes)

    def finish(self) -> list[Event]:
        events = self._advance(final=True)
        if self._held and not self._calls:
            events.append(Content(self._held))
        self._held = ""
        return events

    def _advance(self, final: bool) -> list[Event]:
        events: list[Event] = []
        text = self._text
        while self._pos < len(text):
            start = self._next_start(self._pos)
            self._content(text[self._pos : start], events)
            self._pos = start
            if start == len(text):
                break
            outcome = self._look(start, final)
            if outcome is _UNDECIDED:
                break
            if isinstance(outcome, _NotACall):
                self._content(text[start : outcome.end], events)
            else:
                self._held = ""
                for call in outcome.calls:
                    if self._max_calls is None or self._calls < self._max_calls:
                        events += [CallStart(call.name), CallArguments(call.arguments)]
                        self._calls += 1
            self._pos = outcome.end
        return events

    def _content(self, text: str, events: list[Event]) -> None:
        if not text:
            return
        text = self._held + text
        keep = len(text.rstrip(_SEPARATORS))
        if keep:
            events.append(Content(text[:keep]))
        self._held = text[keep:]

    def _next_start(self, pos: int) -> int:
        text = self._text
        for i in range(pos, len(text)):
            ch = text[i]
            if ch == "{" or ch == "<" or (ch == "[" and self._pythonic):
                return i
        return len(text)

    def _look(self, pos: int, final: bool) -> _NotACall | _Calls | None:
        ch = self._text[pos]
        if ch == "<":
            return self._look_tag(pos, final)
        if ch == "{":
            return self._look_json(pos, final)
        return self._look_pythonic(pos, final)

    def _look_tag(self, pos: int, final: bool) -> _NotACall | _Calls | None:
        text = self._text
        rest = text[pos : pos + 20]
        for tag in _TAGS:
            if rest.startswith(tag):
                break
            if tag.startswith(rest) and not final:
                return _UNDECIDED  # may become a tag once more text arrives
        else:
            return _NotACall(pos + 1)
        after = pos + len(tag)
        if tag == PYTHON_END:  # closes a Llama 4 call block: no content
            return _Calls([], after) if self._calls else _NotACall(after)
        body = skip_space(text, after)
        if body == len(text):
            return _NotACall(after) if final else _UNDECIDED
        if text[body] == "{":
            outcome = self._look_json(body, final)
        elif text[body] == "[" and (self._pythonic or tag == PYTHON_START):
            outcome = self._look_pythonic(body, final)
        else:
            return _NotACall(after)  # e.g. a built-in tool's code after <|python_tag|>: not ours to run
        if isinstance(outcome, _NotACall):
            return _NotACall(after)
        return outcome

    def _look_json(self, pos: int, final: bool) -> _NotACall | _Calls | None:
        text = self._text
        key_at = skip_space(text, pos + 1)
        if key_at == len(text):
            return _NotACall(pos + 1) if final else _UNDECIDED
        if text[key_at] != '"':
            return _NotACall(pos + 1)
        key_end = string_end(text, key_at)
        if key_end is None:
            return _NotACall(pos + 1) if final else _UNDECIDED
        try:
            key = json.loads(text[key_at:key_end])
        except ValueError:
            return _NotACall(pos + 1)
        if key not in _CALL_KEYS:
            return _NotACall(pos + 1)
        end = self._closing(pos, '"')
        if end is None:
            return _NotACall(pos + 1) if final else _UNDECIDED
        call = json_call(text[pos:end], self._names)
        return _NotACall(end) if call is None else _Calls([call], end)

    def _look_pythonic(self, pos: int, final: bool) -> _NotACall | _Calls | None:
        text = self._text
        if _CALL_HEAD.match(text, pos) is None:
            # Undecided while the text could still grow into `[name(`.
            if not final and _CALL_HEAD_PREFIX.fullmatch(text, pos):
                return _UNDECIDED
            return _NotACall(pos + 1)
        end = self._closing(pos, "\"'")
        if end is None:
            return _NotACall(pos + 1) if final else _UNDECIDED
        calls = pythonic_calls(text[pos:end], self._names)
        return _NotACall(end) if calls is None else _Calls(calls, end)


_CALL_HEAD = re.compile(r"\[\s*[A-Za-z_][A-Za-z0-9_]*\s*\(")
_CALL_HEAD_PREFIX = re.compile(r"\[\s*(?:[A-Za-z_][A-Za-z0-9_]*\s*)?")


class ForcedCallParser:
    """tool_choice required or a named function: the output is `{"name": ..., "parameters": {...}}` by grammar.

    Once the name is known the call starts, and each arguments character is passed on as it comes. Output that
    does not open that way (another key order) is read whole at the end, with the same rules as `CallParser`.
    """

    _HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"parameters"\s*:\s*(?=\S)')

    def __init__(self, names: frozenset[str]):
        self._names = names
        self._text = ""
        self._args_at: int | None = None  # where the arguments value starts
        self._scanned = 0  # arguments passed on up to here
        self._depth = 0
        self._in_string = self._escaped = False
        self._done = False

    def feed(self, text: str) -> list[Event]:
        self._text += text
        events: list[Event] = []
        if self._args_at is None:
            m = self._HEAD.match(self._text)
            if m is None or m.group(1) not in self._names:
                return events
            self._args_at = self._scanned = m.end()
            events.append(CallStart(m.group(1)))
        args = self._scan()
        if args:
            events.append(CallArguments(args))
        return events

    def finish(self) -> list[Event]:
        if self._args_at is not None:
            return []  # cut short (max_tokens): the arguments sent so far are all there is, as OpenAI does
        whole = CallParser(self._names, pythonic=False, max_calls=1)
        return whole.feed(self._text) + whole.finish()

    def _scan(self) -> str:
        """Arguments text up to where the value's outermost brace closes; the call's own `}` is not sent."""
        text, start = self._text, self._scanned
        i = start
        while i < len(text) and not self._done:
            ch = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._done = True
            i += 1
        self._scanned = i
        return text[start:i]


@dataclass(slots=True)
class _Scan:
    """Where a bracket scan stopped, so that the next piece of text resumes it instead of starting over."""

    start: int
    at: int
    depth: int = 0
    quote: str | None = None
    escaped: bool = False


def _closing(text: str, scan: _Scan, quotes: str) -> int | None:
    """Index after the bracket opening at scan.start closes (strings skipped), or None when it has not closed yet."""
    depth, quote, escaped = scan.depth, scan.quote, scan.escaped
    for j in range(scan.at, len(text)):
        ch = text[j]
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in quotes:
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
            if depth == 0:
                return j + 1
    scan.at, scan.depth, scan.quote, scan.escaped = len(text), depth, quote, escaped
    return None



"""What the tool-call parsers (server/pipeline/tools/parsers.py) give: events as text arrives, folded into a message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    """A new call; its index is the number of calls started before it."""

    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    """More of the arguments JSON of the latest call."""

    text: str


Event = Content | CallStart | CallArguments


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Parsed:
    content: str | None
    calls: list[ParsedCall]


def collect(events: list[Event]) -> Parsed:
    """Events folded into a message: content (None when empty) and complete calls."""
    content, calls = [], []
    for e in events:
        if isinstance(e, Content):
            content.append(e.text)
        elif isinstance(e, CallStart):
            calls.append([e.name, ""])
        else:
            calls[-1][1] += e.text
    return Parsed("".join(content) or None, [ParsedCall(n, a) for n, a in calls])

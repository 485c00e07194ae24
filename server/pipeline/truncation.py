"""`truncation: auto` (the Responses API's): a conversation too long for the model's context loses its oldest
turns, the leading system messages (instructions) kept, until the prompt leaves room for the answer.

The cut is searched for by halving, so a long conversation is tokenised a few times, not once per turn; it never
falls between a call and its results (a tool message is never the first one kept).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Messages = list[dict[str, Any]]


async def drop_oldest_turns(chat: Messages, prompt: list[int], encode: Callable[[Messages], Awaitable[list[int]]],
                            reserve: int, context: int) -> tuple[Messages, list[int]]:
    """`chat` and its `prompt`, or the shortest cut of it whose prompt leaves `reserve` tokens of `context`;
    unchanged when it fits already or when no cut fits (then the gate refuses it as too long)."""
    if len(prompt) + reserve <= context:
        return chat, prompt
    head = 0
    while head < len(chat) and chat[head]["role"] == "system":
        head += 1
    cuts = [i for i in range(head + 1, len(chat)) if chat[i]["role"] != "tool"]
    best: tuple[Messages, list[int]] | None = None
    low, high = 0, len(cuts) - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = chat[:head] + chat[cuts[middle]:]
        tokens = await encode(candidate)
        if len(tokens) + reserve <= context:
            best, high = (candidate, tokens), middle - 1
        else:
            low = middle + 1
    return best if best is not None else (chat, prompt)

"""Reads a data-only server-sent event stream the way OpenAI clients do."""

from __future__ import annotations

import json
from typing import Any

import httpx


def read_events(client: httpx.Client, path: str, body: dict[str, Any], **kwargs: Any) -> tuple[list[dict], bool]:
    """POSTs and returns (the decoded events, whether the stream ended with [DONE]). Checks the framing."""
    events: list[dict] = []
    done = False
    with client.stream("POST", path, json=body, **kwargs) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    for block in raw.split("\n\n"):
        if not block.strip() or block.startswith(":"):  # keep-alive comments
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        assert not done, "event after [DONE]"
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done

"""A streamed response's events, in the order the OpenAI SDK's stream helper enforces: each output item is added,
grown (`response.output_text.delta`, `response.function_call_arguments.delta`) and done, its `*.done` events
carrying the whole text or arguments; the items' ids are the ones the final response carries.
"""

from __future__ import annotations

from typing import Any

from server import sse
from server.pipeline.responses.objects import call_item, message_item, new_id, text_part


class Events:
    """Frames of one stream, numbered from 0."""

    def __init__(self) -> None:
        self.sequence_number = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        frame = sse.event(kind, {"type": kind, **fields, "sequence_number": self.sequence_number})
        self.sequence_number += 1
        return frame

    def next_number(self) -> int:
        self.sequence_number += 1
        return self.sequence_number - 1


def _delta_logprobs(logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"token": lp["token"], "logprob": lp["logprob"],
             "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in lp["top_logprobs"]]}
            for lp in logprobs]


class OutputStream:
    """The output items of one streamed response: at most one open at a time (text, then calls, in order)."""

    def __init__(self, events: Events):
        self.events = events
        self.items: list[dict[str, Any]] = []  # done, as the final response holds them
        self._open: dict[str, Any] | None = None
        self._text: list[str] = []
        self._logprobs: list[dict[str, Any]] = []
        self._delta: sse.EventTemplate | None = None  # the open message's text delta, filled per token

    def text(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> list[bytes]:
        frames = []
        if self._open is None or self._open["type"] != "message":
            frames += self._close("completed")
            frames += self._open_message()
        self._text.append(text)
        if logprobs:
            self._logprobs += logprobs
            item = self._open
            assert item is not None
            frames.append(self.events("response.output_text.delta", item_id=item["id"], output_index=len(self.items),
                                      content_index=0, delta=text, logprobs=_delta_logprobs(logprobs)))
        else:
            assert self._delta is not None
            frames.append(self._delta.fill(text, self.events.next_number()))
        return frames

    def plain_text(self, text: str) -> bytes | None:
        """The per-token path: the delta frame of `text` (no logprobs) when a message is open, else None."""
        delta = self._delta
        if delta is None:
            return None
        self._text.append(text)
        events = self.events
        number = events.sequence_number
        events.sequence_number = number + 1
        return delta.fill(text, number)

    def call(self, call_id: str, name: str) -> list[bytes]:
        frames = self._close("completed")
        self._open = call_item(new_id("fc_"), call_id, name, "", "in_progress")
        self._text = []
        frames.append(self.events("response.output_item.added", output_index=len(self.items), item=dict(self._open)))
        return frames

    def arguments(self, text: str) -> list[bytes]:
        assert self._open is not None and self._open["type"] == "function_call"
        self._text.append(text)
        return [self.events("response.function_call_arguments.delta", item_id=self._open["id"],
                            output_index=len(self.items), delta=text)]

    def finish(self, status: str) -> list[bytes]:
        """Closes the open item with `status` (completed, incomplete); an output with no item gets an empty
        message, as a response always says something."""
        frames = []
        if self._open is None and not self.items:
            frames += self._open_message()
        return frames + self._close(status)

    def _open_message(self) -> list[bytes]:
        item = self._open = message_item(new_id("msg_"), "", "in_progress", None)
        item["content"] = []
        self._text, self._logprobs = [], []
        index = len(self.items)
        self._delta = sse.EventTemplate("response.output_text.delta", {
            "type": "response.output_text.delta", "item_id": item["id"], "output_index": index, "content_index": 0,
            "delta": sse.SLOT, "logprobs": []})
        return [self.events("response.output_item.added", output_index=index, item=dict(item)),
                self.events("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                            part=text_part("", None))]

    def _close(self, status: str) -> list[bytes]:
        item, index = self._open, len(self.items)
        if item is None:
            return []
        self._open = self._delta = None
        text = "".join(self._text)
        if item["type"] == "message":
            part = text_part(text, self._logprobs)
            done = message_item(item["id"], text, status, self._logprobs)
            frames = [self.events("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text, logprobs=_delta_logprobs(self._logprobs)),
                      self.events("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=part)]
        else:
            done = call_item(item["id"], item["call_id"], item["name"], text, status)
            frames = [self.events("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=text)]
        self.items.append(done)
        frames.append(self.events("response.output_item.done", output_index=index, item=done))
        return frames

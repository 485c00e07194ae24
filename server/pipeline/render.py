"""Shapes engine results into API objects. Chat and text completions differ only here.

Objects are plain dicts rendered by orjson: this is the per-token path, so no pydantic models are built here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.outputs import ChoiceDelta, PromptInfo, TokenLogprob
from server.pipeline.tools.parsers import CallArguments, CallParser, CallStart, Content, ForcedCallParser, parse

if TYPE_CHECKING:
    from server.pipeline.tools.plan import ToolPlan


@dataclass(slots=True)
class ChoiceState:
    """What one streamed choice has sent so far."""

    text_offset: int = 0
    # Tool calling only: the choice's call parser, calls started, and logprobs of text still held back.
    tool_parser: CallParser | ForcedCallParser | None = None
    calls: int = 0
    held_logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class FullChoice:
    """A non-streamed choice, assembled from the engine's result."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None
    prompt: PromptInfo | None = None  # set when the prompt is echoed
    prompt_text: str = ""


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage (Azure OpenAI's is the same): `cached_tokens` are the prompt tokens the prefix cache held."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _finish(reason: str | None) -> str | None:
    # vLLM says "abort" for requests cut short by the server (shutdown, timeout); OpenAI clients know "length".
    return "length" if reason == "abort" else reason


@dataclass(frozen=True)
class Flavor:
    object: str
    chunk_object: str
    id_prefix: str
    top_k: int | None = None  # logprobs alternatives asked for

    def envelope(self, rid: str, created: int, model: str, *, chunk: bool) -> dict[str, Any]:
        return {"id": rid, "object": self.chunk_object if chunk else self.object, "created": created, "model": model}

    def full_choice(self, c: FullChoice) -> dict[str, Any]:
        raise NotImplementedError

    def delta_choice(self, c: ChoiceDelta, state: ChoiceState) -> dict[str, Any]:
        raise NotImplementedError

    def delta_choices(self, c: ChoiceDelta, state: ChoiceState) -> list[dict[str, Any]]:
        """The chunks' choices for one engine delta, in order: one, or with tool calls none to several."""
        return [self.delta_choice(c, state)]

    @property
    def plain_text_deltas(self) -> bool:
        """Every delta is one choice's new text, so a stream may use the pre-rendered per-token frame."""
        return True

    def opening_choice(self, index: int, echo_text: str | None) -> dict[str, Any] | None:
        """The choice's first chunk, sent before any token is generated (None: no such chunk)."""
        return None


@dataclass(frozen=True)
class ChatFlavor(Flavor):
    object: str = "chat.completion"
    chunk_object: str = "chat.completion.chunk"
    id_prefix: str = "chatcmpl-"
    tools: ToolPlan | None = None

    @property
    def plain_text_deltas(self) -> bool:
        return self.tools is None

    def full_choice(self, c: FullChoice) -> dict[str, Any]:
        if self.tools is not None:
            return self._full_with_tools(c)
        return {
            "index": c.index,
            "message": {"role": "assistant", "content": c.text, "tool_calls": None},
            "finish_reason": _finish(c.finish_reason),
            "logprobs": self._logprobs(c.logprobs),
        }

    def opening_choice(self, index: int, echo_text: str | None) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}

    def delta_choice(self, c: ChoiceDelta, state: ChoiceState) -> dict[str, Any]:
        return {
            "index": c.index,
            "delta": {"content": c.text},
            "finish_reason": _finish(c.finish_reason),
            "logprobs": self._logprobs(c.logprobs),
        }

    def _full_with_tools(self, c: FullChoice) -> dict[str, Any]:
        assert self.tools is not None
        parsed = parse(self.tools.parser(), c.text)
        calls = [_call(call.name, call.arguments) for call in parsed.calls] or None
        return {
            "index": c.index,
            "message": {"role": "assistant", "content": parsed.content if calls else parsed.content or "",
                        "tool_calls": calls},
            "finish_reason": _tool_finish(c.finish_reason, bool(calls)),
            "logprobs": self._logprobs(c.logprobs),
        }

    def delta_choices(self, c: ChoiceDelta, state: ChoiceState) -> list[dict[str, Any]]:
        if self.tools is None:
            return [self.delta_choice(c, state)]
        if state.tool_parser is None:
            state.tool_parser = self.tools.parser()
        events = state.tool_parser.feed(c.text)
        if c.finish_reason is not None:
            events += state.tool_parser.finish()
        deltas: list[dict[str, Any]] = []
        for e in events:
            if isinstance(e, Content):
                if deltas and "content" in deltas[-1]:
                    deltas[-1]["content"] += e.text
                else:
                    deltas.append({"content": e.text})
            elif isinstance(e, CallStart):
                deltas.append({"tool_calls": [{"index": state.calls, **_call(e.name, "")}]})
                state.calls += 1
            elif isinstance(e, CallArguments) and e.text:
                deltas.append({"tool_calls": [{"index": state.calls - 1, "function": {"arguments": e.text}}]})
        if c.logprobs:
            state.held_logprobs = (state.held_logprobs or []) + c.logprobs
        if c.finish_reason is not None and not deltas:
            deltas.append({})  # the last chunk carries the finish reason, as OpenAI's does
        out = [{"index": c.index, "delta": d, "finish_reason": None, "logprobs": None} for d in deltas]
        if out:
            if state.held_logprobs is not None:  # tokens held back travel with the next chunk that is sent
                out[-1]["logprobs"] = self._logprobs(state.held_logprobs)
                state.held_logprobs = None
            if c.finish_reason is not None:
                out[-1]["finish_reason"] = _tool_finish(c.finish_reason, state.calls > 0)
        return out

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if logprobs is None:
            return None
        k = self.top_k or 0
        return {
            "content": [
                {
                    "token": lp.token,
                    "logprob": lp.logprob,
                    "bytes": list(lp.token.encode() if lp.token_bytes is None else lp.token_bytes),
                    "top_logprobs": [
                        {"token": tok, "logprob": val, "bytes": list(raw)} for tok, val, raw in lp.top[:k]
                    ],
                }
                for lp in logprobs
            ]
        }


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_finish(reason: str | None, called: bool) -> str | None:
    # A call cut by max_tokens keeps "length", as OpenAI's does: its arguments are incomplete.
    return "tool_calls" if called and reason == "stop" else _finish(reason)


def chunk_groups(choices: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Choices split into chunks that hold each choice index at most once, order kept."""
    groups: list[list[dict[str, Any]]] = []
    seen: set[int] = set()
    for choice in choices:
        if not groups or choice["index"] in seen:
            groups.append([])
            seen = set()
        groups[-1].append(choice)
        seen.add(choice["index"])
    return groups


@dataclass(frozen=True)
class CompletionFlavor(Flavor):
    object: str = "text_completion"
    chunk_object: str = "text_completion"
    id_prefix: str = "cmpl-"

    def full_choice(self, c: FullChoice) -> dict[str, Any]:
        logprobs = None
        text = c.text
        if c.prompt is not None:
            text = c.prompt_text + c.text
            if c.logprobs is not None:
                logprobs = self._legacy(c.prompt.logprobs or [], 0, c.prompt_text)
                tail = self._legacy(c.logprobs, len(c.prompt_text))
                for key in logprobs:
                    logprobs[key] += tail[key]
        elif c.logprobs is not None:
            logprobs = self._legacy(c.logprobs, 0)
        return {"index": c.index, "text": text, "finish_reason": _finish(c.finish_reason), "logprobs": logprobs}

    def opening_choice(self, index: int, echo_text: str | None) -> dict[str, Any] | None:
        if echo_text is None:
            return None
        return {"index": index, "text": echo_text, "finish_reason": None, "logprobs": None}

    def delta_choice(self, c: ChoiceDelta, state: ChoiceState) -> dict[str, Any]:
        logprobs = None
        if c.logprobs is not None:
            logprobs = self._legacy(c.logprobs, state.text_offset)
        state.text_offset += len(c.text)
        return {"index": c.index, "text": c.text, "finish_reason": _finish(c.finish_reason), "logprobs": logprobs}

    @staticmethod
    def _legacy(logprobs: list[TokenLogprob], offset: int, text: str | None = None) -> dict[str, list[Any]]:
        """Legacy logprobs; with `text`, a token absent from it (the prompt's BOS) takes no room in the offsets."""
        out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
        for lp in logprobs:
            out["text_offset"].append(offset)
            out["tokens"].append(legacy_token_name(lp.token, lp.token_bytes))
            out["token_logprobs"].append(lp.logprob)
            # The first prompt token has no logprob, hence no alternatives either.
            out["top_logprobs"].append(None if lp.logprob is None else legacy_alternatives(lp.top))
            if text is None or text.startswith(lp.token, offset):
                offset += len(lp.token)
        return out


def legacy_token_name(text: str, raw: bytes | None) -> str:
    """A token as legacy logprobs name it: its text, or, for bytes that are no text on their own (a fragment of a
    UTF-8 character), `bytes:` and each byte as `\\xNN`, as OpenAI writes them."""
    if raw is None:
        return text
    try:
        raw.decode()
    except UnicodeDecodeError:
        return _bytes_name(raw)
    return text


def legacy_alternatives(top: list[tuple[str, float, bytes]]) -> dict[str, float]:
    """The alternatives as legacy logprobs' dict, one key per candidate: two candidates with the same text (an
    added token spelling a vocabulary piece) keep apart by their bytes."""
    out: dict[str, float] = {}
    for text, logprob, raw in top:
        name = legacy_token_name(text, raw)
        if name in out:
            name = _bytes_name(raw)
        out.setdefault(name, logprob)
    return out


def _bytes_name(raw: bytes) -> str:
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@dataclass(slots=True)
class StreamState:
    choices: dict[int, ChoiceState] = field(default_factory=dict)

    def of(self, index: int) -> ChoiceState:
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = ChoiceState()
        return state

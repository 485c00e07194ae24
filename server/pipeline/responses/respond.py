"""The answer to a Responses request: one `response` object, or its event stream, generated as chat's is
(server/pipeline/respond.py: the engine calls, the guard, the metrics) and kept in the store when `store` is on.
Background responses are server/pipeline/responses/background.py's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine.core import LlamaEngine
from engine.errors import EngineError
from server import sse
from server.errors import APIError, engine_error
from server.pipeline import respond as chat
from server.pipeline.job import Job
from server.pipeline.render import ChoiceState, usage as chat_usage
from server.pipeline.responses.events import Events, OutputStream
from server.pipeline.responses.objects import (
    ResponseDraft,
    content_filter_error,
    output_items,
    response_object,
    status_of,
    usage,
)
from server.safety.moderation import CONTENT_FILTER_RESULTS
from server.store.responses import ResponseStore, StoredResponse, StoreUnavailable

log = logging.getLogger("llamaserve.responses")


async def keep(store: ResponseStore, draft: ResponseDraft, response: dict[str, Any]) -> None:
    """Stores `response` when its request asked for it. A store that is away costs the record, not the answer."""
    if not draft.store:
        return
    try:
        await store.put(StoredResponse(draft.id, draft.owner, response, draft.input_items, draft.created_at))
    except StoreUnavailable as exc:
        log.warning("response %s not stored: %s", draft.id, exc)


async def prompt_verdict(job: Job) -> dict[str, Any] | None:
    """The guard's check of the input: None when it passes, else the failed response's error (Azure's details)."""
    if job.moderation is None:
        return None
    try:
        await job.moderation.check_prompt()
    except APIError as exc:
        if exc.code != "content_filter":
            raise
        return {**content_filter_error((exc.inner or {}).get("content_filter_result")), "message": exc.message}
    return None


async def respond(job: Job, engine: LlamaEngine, http_request: Request,
                  deadline_frames: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None, *,
                  store: ResponseStore, **sse_options: Any) -> Response:
    """The response object, or with `stream` its events; `deadline_frames` and `sse_options` as chat's."""
    draft = job.response
    assert draft is not None
    if job.stream:
        frames = stream(job, engine, store)
        return sse.event_stream(deadline_frames(frames) if deadline_frames else frames, **sse_options)
    blocked = await prompt_verdict(job)
    if blocked is not None:
        body = failed(job, draft, blocked)
    else:
        body = from_chat(draft, await chat.until_disconnected(http_request, chat.full_body(job, engine)))
    await keep(store, draft, body)
    return Response(orjson.dumps(body), media_type="application/json")


def failed(job: Job, draft: ResponseDraft, error: dict[str, Any]) -> dict[str, Any]:
    return response_object(draft, "failed", [], usage(chat_usage(sum(len(p) for p in job.prompts), 0)), error)


def from_chat(draft: ResponseDraft, body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's body (server/pipeline/respond.py `full_body`) as the response object."""
    choice = body["choices"][0]
    status, incomplete = status_of(choice["finish_reason"])
    error = content_filter_error(choice.get(CONTENT_FILTER_RESULTS)) if status == "failed" else None
    return response_object(draft, status, output_items(choice), usage(body["usage"]), error, incomplete)


async def stream(job: Job, engine: LlamaEngine, store: ResponseStore) -> AsyncIterator[bytes]:
    draft = job.response
    assert draft is not None
    events = Events()
    yield events("response.created", response=response_object(draft, "in_progress"))
    yield events("response.in_progress", response=response_object(draft, "in_progress"))
    blocked = await prompt_verdict(job)
    if blocked is not None:
        body = failed(job, draft, blocked)
        await keep(store, draft, body)
        yield events("response.failed", response=body)
        return
    output = OutputStream(events)
    flavor, state = job.flavor, ChoiceState()
    plain = getattr(flavor, "tools", None) is None
    completion_tokens = cached_tokens = 0
    finish_reason: str | None = None
    filter_results: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    try:
        steps = chat.merged_steps(job, engine)
        async for p_idx, step in job.moderation.stream(steps) if job.moderation is not None else steps:
            if job.metrics is not None:
                job.metrics.step(p_idx, step)
            completion_tokens, cached_tokens = step.completion_tokens, max(cached_tokens, step.cached_tokens)
            for c in step.choices:
                if c.finish_reason is not None:
                    finish_reason = c.finish_reason
                    filter_results = (step.extra.get(CONTENT_FILTER_RESULTS) or {}).get(c.index)
                if plain:
                    if c.text:
                        logprobs = flavor.delta_choice(c, state)["logprobs"] if c.logprobs else None
                        for frame in output.text(c.text, logprobs and logprobs["content"]):
                            yield frame
                    continue
                for delta in flavor.delta_choices(c, state):
                    for frame in _delta_frames(output, delta["delta"], delta.get("logprobs")):
                        yield frame
    except EngineError as exc:
        failure = engine_error(exc)
        error = {"code": "server_error", "message": failure.message}
    status, incomplete = ("failed", None) if error else status_of(finish_reason)
    if status == "failed" and error is None:
        error = content_filter_error(filter_results)
    for frame in output.finish("incomplete" if status == "incomplete" else "completed"):
        yield frame
    used = usage(chat_usage(sum(len(p) for p in job.prompts), completion_tokens, cached_tokens))
    body = response_object(draft, status, output.items, used, error, incomplete)
    if filter_results is not None and status != "failed":
        body[CONTENT_FILTER_RESULTS] = filter_results
    await keep(store, draft, body)
    yield events(f"response.{status}", response=body)


def _delta_frames(output: OutputStream, delta: dict[str, Any], logprobs: dict[str, Any] | None) -> list[bytes]:
    """One chat delta with tools (server/pipeline/render.py `ChatFlavor.delta_choices`) as events."""
    frames = []
    if delta.get("content"):
        frames += output.text(delta["content"], logprobs and logprobs["content"])
    for call in delta.get("tool_calls") or ():
        if "id" in call:
            frames += output.call(call["id"], call["function"]["name"])
        if call["function"].get("arguments"):
            frames += output.arguments(call["function"]["arguments"])
    return frames

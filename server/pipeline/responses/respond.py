"""The answer to a Responses request: one `response` object, or its event stream, generated as chat's is
(server/pipeline/respond.py: the engine calls, the guard, the metrics) and kept in the store when `store` is on.
Background responses are server/pipeline/responses/background.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine.core import LlamaEngine
from engine.errors import EngineError
from server import sse
from server.errors import engine_error
from server.pipeline import respond as chat
from server.pipeline.job import Job
from server.pipeline.render import ChoiceState, usage as chat_usage
from server.pipeline.responses.events import Events, OutputStream
from server.pipeline.responses.background import BackgroundRuns
from server.pipeline.responses.objects import content_filter_error, response_object, status_of, usage
from server.pipeline.responses.outcome import failed, from_chat, keep, prompt_verdict
from server.safety.moderation import CONTENT_FILTER_RESULTS
from server.store.responses import ResponseStore


async def respond(job: Job, engine: LlamaEngine, http_request: Request,
                  deadline_frames: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None, *,
                  store: ResponseStore, runs: BackgroundRuns, charge: Callable[[int], None],
                  **sse_options: Any) -> Response:
    """The response object, or with `stream` its events; `deadline_frames` and `sse_options` as chat's. A
    background response is answered `queued` while `runs` generates it, `charge` taking its output tokens."""
    draft = job.response
    assert draft is not None
    if draft.background:
        queued = response_object(draft, "queued")
        await keep(store, draft, queued)
        runs.start(job, engine, store, charge)
        return Response(orjson.dumps(queued), media_type="application/json")
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


async def stream(job: Job, engine: LlamaEngine, store: ResponseStore) -> AsyncIterator[bytes]:
    """The events; those that come together go in one write (each write costs a pass through the middleware)."""
    draft = job.response
    assert draft is not None
    events = Events()
    yield events("response.created", response=response_object(draft, "in_progress")) + \
        events("response.in_progress", response=response_object(draft, "in_progress"))
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
    last: list[bytes] = []  # the finishing step's events, sent with the closing ones
    try:
        steps = chat.merged_steps(job, engine)
        async for p_idx, step in job.moderation.stream(steps) if job.moderation is not None else steps:
            if job.metrics is not None:
                job.metrics.step(p_idx, step)
            completion_tokens = step.completion_tokens
            if step.cached_tokens > cached_tokens:
                cached_tokens = step.cached_tokens
            if plain and len(step.choices) == 1:
                c = step.choices[0]
                if c.finish_reason is None and c.logprobs is None and c.text:
                    frame = output.plain_text(c.text)
                    if frame is not None:
                        yield frame
                        continue
            frames: list[bytes] = []
            for c in step.choices:
                if c.finish_reason is not None:
                    finish_reason = c.finish_reason
                    filter_results = (step.extra.get(CONTENT_FILTER_RESULTS) or {}).get(c.index)
                if plain:
                    if c.text:
                        logprobs = flavor.delta_choice(c, state)["logprobs"] if c.logprobs else None
                        frames += output.text(c.text, logprobs and logprobs["content"])
                    continue
                for delta in flavor.delta_choices(c, state):
                    frames += _delta_frames(output, delta["delta"], delta.get("logprobs"))
            if finish_reason is not None:
                last += frames
            elif frames:
                yield b"".join(frames)
    except EngineError as exc:
        failure = engine_error(exc)
        error = {"code": "server_error", "message": failure.message}
    status, incomplete = ("failed", None) if error else status_of(finish_reason)
    if status == "failed" and error is None:
        error = content_filter_error(filter_results)
    last += output.finish("incomplete" if status == "incomplete" else "completed")
    used = usage(chat_usage(sum(len(p) for p in job.prompts), completion_tokens, cached_tokens))
    body = response_object(draft, status, output.items, used, error, incomplete)
    if filter_results is not None and status != "failed":
        body[CONTENT_FILTER_RESULTS] = filter_results
    await keep(store, draft, body)
    yield b"".join([*last, events(f"response.{status}", response=body)])


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

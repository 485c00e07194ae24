"""The response to a generation request: in full (one JSON body) or as an event stream (SSE frames as the engine
produces tokens). Chat and text completions share it; their `render.Flavor` shapes the choices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine.core import LlamaEngine
from engine.errors import EngineError
from engine.outputs import ChoiceDelta, Step
from server import sse
from server.pipeline import render
from server.errors import APIError, engine_error, error_body
from server.pipeline.job import Job
from server.safety.moderation import annotate



async def respond(job: Job, engine: LlamaEngine, http_request: Request,
                  deadline_frames: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
                  **sse_options: Any) -> Response:
    """An event stream when the client asked for one (`stream: true`), else one JSON body.
    `deadline_frames` wraps the event stream's frames (deadlines); `sse_options` go to the event stream."""
    if job.moderation is not None:
        await job.moderation.check_prompt()
    if job.stream:
        frames = _frames(job, engine)
        return sse.event_stream(deadline_frames(frames) if deadline_frames else frames, **sse_options)
    body = await until_disconnected(http_request, full_body(job, engine))
    return Response(orjson.dumps(body), media_type="application/json")


async def full_body(job: Job, engine: LlamaEngine) -> dict[str, Any]:
    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the other prompts' requests
            tasks = [group.create_task(engine.complete(p, job.engine_input, f"{job.request_id}-{i}"))
                     for i, p in enumerate(job.prompts)]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    steps = [t.result() for t in tasks]
    if job.moderation is not None:
        await job.moderation.full(steps)
    if job.metrics is not None:
        job.metrics.full(steps)
    n = job.engine_input.n
    choices = []
    for p_idx, step in enumerate(steps):
        for c in step.choices:
            echo = job.echo_texts is not None
            full = render.FullChoice(
                index=p_idx * n + c.index,
                text=c.text,
                finish_reason=c.finish_reason,
                logprobs=c.logprobs if job.engine_input.logprobs is not None else None,
                prompt=step.prompt if echo else None,
                prompt_text=job.echo_texts[p_idx] if echo else "",
            )
            choices.append(annotate(job.flavor.full_choice(full), step, c.index))
    body = job.flavor.envelope(job.request_id, int(time.time()), job.model_name or engine.info.name, chunk=False)
    body["choices"] = choices
    body["usage"] = render.usage(sum(len(p) for p in job.prompts), sum(s.completion_tokens for s in steps),
                                 sum(s.cached_tokens for s in steps))
    return body


async def _frames(job: Job, engine: LlamaEngine) -> AsyncIterator[bytes]:
    flavor, n = job.flavor, job.engine_input.n
    created = int(time.time())
    head = flavor.envelope(job.request_id, created, job.model_name or engine.info.name, chunk=True)
    state = render.StreamState()
    for i in range(job.total_choices):
        opening = flavor.opening_choice(i, job.echo_texts[i // n] if job.echo_texts else None)
        if opening is not None:
            yield sse.frame({**head, "choices": [opening]})
    completion_tokens = [0] * len(job.prompts)
    cached_tokens = [0] * len(job.prompts)  # the largest a step reported: a guard's closing step reports none
    finished = 0
    include_usage, every_usage = job.usage_at_end, job.usage_in_every_chunk
    # The per-token frame of a one-choice stream without logprobs, rendered once: only the text changes.
    text_frame = None
    last = b""
    if job.total_choices == 1 and job.engine_input.logprobs is None and not every_usage and flavor.plain_text_deltas:
        probe = flavor.delta_choice(ChoiceDelta(0, sse.SLOT, [], None), render.ChoiceState())
        text_frame = sse.FrameTemplate({**head, "choices": [probe]})
    try:
        steps = merged_steps(job, engine)
        async for p_idx, step in job.moderation.stream(steps) if job.moderation is not None else steps:
            if job.metrics is not None:
                job.metrics.step(p_idx, step)
            if text_frame is not None and len(step.choices) == 1:
                c = step.choices[0]
                if c.finish_reason is None and c.logprobs is None:
                    completion_tokens[0] = step.completion_tokens
                    yield text_frame.fill(c.text)
                    continue
            choices = []
            for c in step.choices:
                local_index, c.index = c.index, c.index + p_idx * n
                choices += [annotate(d, step, local_index) for d in flavor.delta_choices(c, state.of(c.index))]
                finished += c.finish_reason is not None
            completion_tokens[p_idx] = step.completion_tokens
            cached_tokens[p_idx] = max(cached_tokens[p_idx], step.cached_tokens)
            groups = render.chunk_groups(choices)
            if not groups:
                continue  # text held back until it is known to be a tool call or content
            for group in groups[:-1]:
                yield sse.frame({**head, "choices": group})
            chunk = {**head, "choices": groups[-1]}
            if every_usage or (finished == job.total_choices and include_usage):
                chunk["usage"] = render.usage(sum(len(p) for p in job.prompts), sum(completion_tokens),
                                              sum(cached_tokens))
            if finished == job.total_choices:
                last = sse.frame(chunk)  # nothing follows it but [DONE]: both go in one write
            else:
                yield sse.frame(chunk)
    except EngineError as exc:
        # Headers are gone already: the error travels as an event, which OpenAI SDKs raise as an exception.
        last = sse.frame(error_body(engine_error(exc)))
    yield last + sse.DONE


async def merged_steps(job: Job, engine: LlamaEngine) -> AsyncIterator[tuple[int, Step]]:
    """The steps of every prompt's engine request, as they come (one prompt: no extra task or queue)."""
    if len(job.prompts) == 1:
        async for step in engine.stream(job.prompts[0], job.engine_input, job.request_id):
            yield 0, step
        return
    queue: asyncio.Queue[tuple[int, Step] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, prompt: list[int]) -> None:
        try:
            async for step in engine.stream(prompt, job.engine_input, f"{job.request_id}-{i}"):
                await queue.put((i, step))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            await queue.put(exc)
            return
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(job.prompts)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


async def until_disconnected(request: Request, work: Any) -> Any:
    """Runs `work` unless the client goes away first; then cancelling it aborts the engine request."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise APIError(499, "client closed the request", code="client_closed_request")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass

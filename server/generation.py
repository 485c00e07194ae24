"""The request pipeline both completion APIs share: validate -> convert -> stream or respond in full.

Chat and text completions differ only in how the prompt is built (`prepare_*`) and in their `Flavor`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from engine.adapters import Adapter
from engine.core import LlamaEngine
from engine.errors import EngineError, EngineFailure, InvalidGenerationRequest
from engine.outputs import ChoiceDelta, Step
from engine.sampling import PASS_THROUGH_FIELDS, GenerationPlan, llama_json_grammar, validate_pass_through
from schemas import ChatCompletionRequest, CompletionRequest, ExtraParametersMode, GenerationRequest
from schemas.chat import template_messages
from schemas.completions import DEFAULT_COMPLETION_MAX_TOKENS
from server import render, sse
from server.errors import APIError, bad_request, error_body, from_pydantic, from_validation_errors
from server.safety.moderation import Moderation, annotate
from server.settings import Settings
from server.tools import plan as tools

if TYPE_CHECKING:
    from server.metrics import Trace

BodyModel = TypeVar("BodyModel", bound=BaseModel)


@dataclass
class Job:
    """A validated request, converted for the engine."""

    request_id: str
    request: GenerationRequest
    flavor: render.Flavor
    prompts: list[list[int]]
    plan: GenerationPlan
    echo_texts: list[str] | None = None  # prompt texts to echo, one per prompt
    trace: Trace | None = None  # metrics and access-log hook, set by the route
    moderation: Moderation | None = None  # content safety checks, set by the route when a guard is on

    @property
    def model_name(self) -> str | None:
        """The adapter's name, which responses report as their model; None: the base model's."""
        return self.plan.adapter.name if self.plan.adapter else None

    @property
    def total_choices(self) -> int:
        return len(self.prompts) * self.request.n


# --- validate


def parse_body(raw: bytes, model: type[BodyModel], settings: Settings | None = None) -> BodyModel:
    """Bodies are parsed here rather than by FastAPI, so that every failure takes the documented error shape."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    if settings is not None:
        _check_counts(body, settings)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_pydantic(exc) from exc


def _check_counts(body: dict[str, Any], settings: Settings) -> None:
    """Counts checked before validation, whose cost grows with them (a second per ~100k items)."""
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > settings.max_chat_messages:
        raise bad_request(f"messages has {len(messages)} items, more than the limit of {settings.max_chat_messages}",
                          "messages", "too_many_messages")
    prompt = body.get("prompt")
    # A list of token ids is one prompt, however long; any other list is a list of prompts.
    if isinstance(prompt, list) and len(prompt) > settings.max_prompts_per_request and not all(
        type(t) is int for t in prompt
    ):
        raise bad_request(f"prompt has {len(prompt)} prompts, more than the limit of "
                          f"{settings.max_prompts_per_request} per request", "prompt", "too_many_prompts")


def check_prompt_chars(chars: int, settings: Settings, param: str) -> None:
    if chars > settings.max_prompt_chars:
        raise bad_request(f"{param} holds {chars} characters of text, more than the limit of "
                          f"{settings.max_prompt_chars} per request", param, "prompt_too_large")


def parse_request(raw: bytes, model: type[GenerationRequest], extra_header: str | None,
                  settings: Settings | None = None) -> GenerationRequest:
    req = parse_body(raw, model, settings)
    _apply_extra_parameters(req, extra_header)
    return req


def _apply_extra_parameters(req: GenerationRequest, header: str | None) -> None:
    try:
        mode = ExtraParametersMode(header or "error")
    except ValueError:
        raise bad_request(
            f"extra-parameters header must be one of error, drop, pass-through; got {header!r}", "extra-parameters"
        ) from None
    extras = req.extra_fields()
    if not extras or mode is ExtraParametersMode.drop:
        req.__pydantic_extra__ = {}
        return
    unknown = sorted(extras) if mode is ExtraParametersMode.error else sorted(set(extras) - PASS_THROUGH_FIELDS)
    if unknown:
        raise APIError(
            422,
            f"extra parameters {unknown} are not allowed"
            + (" (set the extra-parameters header to drop or pass-through)" if mode is ExtraParametersMode.error else ""),
            param=unknown[0],
            code="parameter_not_supported",
            detail=[{"loc": ["body", name], "input": extras[name], "msg": "Extra parameter not supported"} for name in unknown],
        )
    try:
        req.__pydantic_extra__ = validate_pass_through(extras)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False, include_context=False)) from exc


# --- convert


def check_model(model: str | None, engine: LlamaEngine) -> Adapter | None:
    """The LoRA adapter `model` names; None for the base model."""
    if model is None or model in (engine.info.name, engine.info.path):
        return None
    adapter = engine.adapters.get(model)
    if adapter is None:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{engine.info.name}`",
                       param="model", code="model_not_found")
    return adapter


def _choices_and_limits(req: GenerationRequest, settings: Settings, num_logprobs: int | None) -> int:
    """Checks n, best_of, beam search and logprobs; returns the number of candidates to generate."""
    if req.n > settings.max_n:
        raise bad_request(f"n must be at most {settings.max_n}", "n")
    if num_logprobs is not None and num_logprobs > settings.max_logprobs:
        raise bad_request(f"logprobs must be at most {settings.max_logprobs}", "logprobs")
    best_of = req.best_of if req.best_of is not None else req.n
    if best_of < req.n:
        raise bad_request(f"best_of ({best_of}) must be greater than or equal to n ({req.n})", "best_of")
    if best_of > settings.max_best_of:
        raise bad_request(f"best_of must be at most {settings.max_best_of}", "best_of")
    if req.use_beam_search:
        if best_of <= 1:
            raise bad_request("use_beam_search needs a beam width (best_of, else n) greater than 1", "best_of")
        if req.temperature not in (None, 0):
            raise bad_request("use_beam_search requires temperature 0", "temperature")
        if req.stream:
            raise bad_request("use_beam_search cannot be streamed", "stream")
        if req.stop:
            raise bad_request("stop strings are not supported with use_beam_search; use stop_token_ids", "stop")
        # Beams are ranked on the model's own logprobs, which biases and minimums would not change.
        for name in ("logit_bias", "min_tokens"):
            if getattr(req, name):
                raise bad_request(f"{name} is not supported with use_beam_search", name)
        return best_of
    if req.stream and best_of > req.n:
        raise bad_request("best_of > n cannot be streamed: candidates are ranked after they finish", "best_of")
    if best_of > 1 and req.temperature == 0:
        param = "best_of" if best_of > req.n else "n"
        raise bad_request(f"{param} > 1 needs sampling: temperature 0 would give {best_of} identical answers", param)
    return best_of


def _max_tokens(req: GenerationRequest, prompt_len: int, context: int, prompt_param: str, default: int | None) -> int:
    room = context - prompt_len
    if room < 1:
        raise bad_request(
            f"the prompt is {prompt_len} tokens, which leaves no room in the model's context of {context} tokens",
            prompt_param,
            "context_length_exceeded",
        )
    if req.max_tokens is None:
        return room if default is None else min(default, room)
    if req.max_tokens > room:
        raise bad_request(
            f"prompt ({prompt_len} tokens) + max_tokens ({req.max_tokens}) exceeds the model's context of "
            f"{context} tokens",
            "max_tokens",
            "context_length_exceeded",
        )
    return req.max_tokens


def _fan_out(req: GenerationRequest, settings: Settings, num_prompts: int, num_logprobs: int | None) -> int:
    """Candidates per prompt, once the request's engine sequences (prompts x candidates) are known to fit."""
    num_choices = _choices_and_limits(req, settings, num_logprobs)
    if num_prompts * num_choices > settings.max_sequences_per_request:
        param = "prompt" if num_prompts > 1 else ("best_of" if num_choices > req.n else "n")
        raise bad_request(
            f"{num_prompts} prompt(s) x {num_choices} candidates would start {num_prompts * num_choices} engine "
            f"sequences, more than the limit of {settings.max_sequences_per_request} per request",
            param, "too_many_sequences",
        )
    return num_choices


def _plan(req, settings: Settings, engine: LlamaEngine, prompts: list[list[int]], prompt_param: str,
          default_max: int | None, num_logprobs: int | None, prompt_logprobs: int | None = None,
          output_schema: dict[str, Any] | None = None, adapter: Adapter | None = None) -> GenerationPlan:
    num_choices = _fan_out(req, settings, len(prompts), num_logprobs)
    if req.stop_token_ids:
        engine.check_token_ids(req.stop_token_ids, "stop_token_ids")
    if req.logit_bias:
        try:
            engine.check_token_ids([int(t) for t in req.logit_bias], "logit_bias")
        except ValueError:
            raise bad_request("logit_bias keys must be token ids", "logit_bias") from None
    longest = max(len(p) for p in prompts)
    max_tokens = _max_tokens(req, longest, engine.info.max_model_len, prompt_param, default_max)
    return GenerationPlan(
        request=req,
        max_tokens=max_tokens,
        num_choices=num_choices,
        num_logprobs=num_logprobs,
        prompt_logprobs=prompt_logprobs,
        pass_through=req.extra_fields() or None,
        output_grammar=None if output_schema is None else llama_json_grammar(output_schema),
        adapter=adapter,
    )


def _job(req: GenerationRequest, flavor: render.Flavor, prompts: list[list[int]], plan: GenerationPlan,
         echo_texts: list[str] | None = None) -> Job:
    return Job(flavor.id_prefix + uuid.uuid4().hex, req, flavor, prompts, plan, echo_texts)


async def prepare_chat(req: ChatCompletionRequest, engine: LlamaEngine, settings: Settings) -> Job:
    adapter = check_model(req.model, engine)
    if not engine.info.is_chat:
        raise bad_request("this model has no chat template; use the completions route", "messages")
    if req.top_logprobs is not None and req.logprobs is not True:
        raise bad_request("top_logprobs requires logprobs: true", "top_logprobs")
    if req.top_logprobs is not None and req.top_logprobs > settings.max_logprobs:
        raise bad_request(f"top_logprobs must be at most {settings.max_logprobs}", "top_logprobs")
    k = req.num_logprobs()
    _fan_out(req, settings, 1, k)  # before the prompt is built: refuse what cannot run before doing work for it
    fmt = engine.info.tool_call_format if settings.tool_call_format == "auto" else settings.tool_call_format
    tool_plan = tools.resolve(req, fmt)
    messages = tools.for_template(template_messages(req.messages), fmt)
    check_prompt_chars(sum(len(m["content"]) for m in messages), settings, "messages")
    with_tools = {"tools": tool_plan.template_tools} if tool_plan else {}  # requests without tools: as before
    prompt = await engine.encode_chat(messages, max_chars=settings.max_prompt_chars, **with_tools)
    plan = _plan(req, settings, engine, [prompt], "messages", None, k,
                 output_schema=tool_plan.schema if tool_plan else None, adapter=adapter)
    return _job(req, render.ChatFlavor(top_k=k, tools=tool_plan), [prompt], plan)


async def prepare_completion(req: CompletionRequest, engine: LlamaEngine, settings: Settings) -> Job:
    adapter = check_model(req.model, engine)
    if req.suffix:
        raise bad_request("suffix is not supported: Llama models do not fill in the middle", "suffix")
    k = req.num_logprobs()
    given = req.prompts()
    if len(given) > settings.max_prompts_per_request:
        raise bad_request(f"prompt has {len(given)} prompts, more than the limit of "
                          f"{settings.max_prompts_per_request} per request", "prompt", "too_many_prompts")
    _fan_out(req, settings, len(given), k)
    check_prompt_chars(sum(len(p) for p in given if isinstance(p, str)), settings, "prompt")
    prompts: list[list[int]] = []
    for p in given:
        if isinstance(p, str):
            prompts.append(await engine.encode_text(p))
        else:
            engine.check_token_ids(p, "prompt")
            prompts.append(p)
    echo_logprobs = k if (req.echo and k is not None) else None
    plan = _plan(req, settings, engine, prompts, "prompt", DEFAULT_COMPLETION_MAX_TOKENS, k, echo_logprobs,
                 adapter=adapter)
    echo_texts = None
    if req.echo:
        echo_texts = [p if isinstance(p, str) else engine.decode(p) for p in req.prompts()]
    return _job(req, render.CompletionFlavor(top_k=k), prompts, plan, echo_texts)


# --- respond


async def respond(job: Job, engine: LlamaEngine, http_request: Request,
                  guard: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
                  **sse_options: Any) -> Response:
    """`guard` wraps a stream's frames (deadlines); `sse_options` go to the event stream."""
    if job.moderation is not None:
        await job.moderation.check_prompt()
    if job.request.stream:
        frames = _frames(job, engine)
        return sse.event_stream(guard(frames) if guard else frames, **sse_options)
    body = await _until_disconnected(http_request, _full(job, engine))
    return Response(orjson.dumps(body), media_type="application/json")


async def _full(job: Job, engine: LlamaEngine) -> dict[str, Any]:
    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the other prompts' requests
            tasks = [group.create_task(engine.complete(p, job.plan, f"{job.request_id}-{i}")) for i, p in enumerate(job.prompts)]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    steps = [t.result() for t in tasks]
    if job.moderation is not None:
        await job.moderation.full(steps)
    if job.trace is not None:
        job.trace.full(steps)
    n = job.request.n
    choices = []
    for p_idx, step in enumerate(steps):
        for c in step.choices:
            echo = job.echo_texts is not None
            full = render.FullChoice(
                index=p_idx * n + c.index,
                text=c.text,
                finish_reason=c.finish_reason,
                logprobs=c.logprobs if job.plan.num_logprobs is not None else None,
                prompt=step.prompt if echo else None,
                prompt_text=job.echo_texts[p_idx] if echo else "",
            )
            choices.append(annotate(job.flavor.full_choice(full), step, c.index))
    body = job.flavor.envelope(job.request_id, int(time.time()), job.model_name or engine.info.name, chunk=False)
    body["choices"] = choices
    body["usage"] = render.usage(sum(len(p) for p in job.prompts), sum(s.completion_tokens for s in steps))
    return body


async def _frames(job: Job, engine: LlamaEngine) -> AsyncIterator[bytes]:
    flavor, n = job.flavor, job.request.n
    created = int(time.time())
    head = flavor.envelope(job.request_id, created, job.model_name or engine.info.name, chunk=True)
    state = render.StreamState()
    for i in range(job.total_choices):
        opening = flavor.opening_choice(i, job.echo_texts[i // n] if job.echo_texts else None)
        if opening is not None:
            yield sse.frame({**head, "choices": [opening]})
    completion_tokens = [0] * len(job.prompts)
    finished = 0
    options = job.request.stream_options
    include_usage = options is None or options.include_usage
    every_usage = options is not None and options.continuous_usage_stats
    # The per-token frame of a one-choice stream without logprobs, rendered once: only the text changes.
    text_frame = None
    last = b""
    if job.total_choices == 1 and job.plan.num_logprobs is None and not every_usage and flavor.plain_text_deltas:
        probe = flavor.delta_choice(ChoiceDelta(0, sse.SLOT, [], None), render.ChoiceState())
        text_frame = sse.FrameTemplate({**head, "choices": [probe]})
    try:
        steps = _merged(job, engine)
        async for p_idx, step in job.moderation.stream(steps) if job.moderation is not None else steps:
            if job.trace is not None:
                job.trace.step(p_idx, step)
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
            groups = render.chunk_groups(choices)
            if not groups:
                continue  # text held back until it is known to be a tool call or content
            for group in groups[:-1]:
                yield sse.frame({**head, "choices": group})
            chunk = {**head, "choices": groups[-1]}
            if every_usage or (finished == job.total_choices and include_usage):
                chunk["usage"] = render.usage(sum(len(p) for p in job.prompts), sum(completion_tokens))
            if finished == job.total_choices:
                last = sse.frame(chunk)  # nothing follows it but [DONE]: both go in one write
            else:
                yield sse.frame(chunk)
    except EngineError as exc:
        # Headers are gone already: the error travels as an event, which OpenAI SDKs raise as an exception.
        last = sse.frame(error_body(engine_error(exc)))
    yield last + sse.DONE


async def _merged(job: Job, engine: LlamaEngine) -> AsyncIterator[tuple[int, Step]]:
    """The steps of every prompt's engine request, as they come (one prompt: no extra task or queue)."""
    if len(job.prompts) == 1:
        async for step in engine.stream(job.prompts[0], job.plan, job.request_id):
            yield 0, step
        return
    queue: asyncio.Queue[tuple[int, Step] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, prompt: list[int]) -> None:
        try:
            async for step in engine.stream(prompt, job.plan, f"{job.request_id}-{i}"):
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


async def _until_disconnected(request: Request, work: Any) -> Any:
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


def engine_error(exc: Exception) -> APIError:
    if isinstance(exc, InvalidGenerationRequest):
        return bad_request(exc.message, exc.param)
    if isinstance(exc, EngineFailure):
        if exc.busy:
            return APIError(503, exc.message, code="engine_overloaded", headers={"Retry-After": "1"})
        return APIError(500, exc.message, code="engine_error")
    return APIError(503, str(exc) or "the engine is not available", code="engine_unavailable",
                    headers={"Retry-After": "5"})

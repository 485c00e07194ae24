"""The generation routes: Azure's /chat/completions and /completions, OpenAI's and Llama's /v1/ twins, Azure
OpenAI's /openai/v1/chat/completions, and the Responses API's create (/v1/responses, /responses,
/openai/v1/responses; its stored responses are server/routes/responses.py's).

A generation request's lifetime is put together here, in `_serve`: parsed, admitted (the rate limits and a slot,
before its prompt is tokenised; see server/protection/limits.py `RequestAdmission`) and prepared
(server/pipeline/generation.py), measured (metrics and the access log's token counts, at the exchange's end),
checked by the guard if one is on, and answered within its deadline. The slot is freed at the exchange's end, the
outermost middleware's (server/observe/access_log.py), after the response's last byte; the tokens are settled
then too, or before a full response starts, so that its x-ratelimit-* headers show them.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine.core import LlamaEngine
from engine.errors import EngineError
from schemas import ChatCompletionRequest, CompletionRequest
from schemas.responses import ResponsesRequest
from server import sse
from server.errors import engine_error
from server.observe import tracing
from server.observe.exchange import Exchange, exchange_of
from server.pipeline import generation, parse, respond
from server.pipeline.responses import gate as responses_gate
from server.pipeline.responses import respond as responses_respond
from server.protection.limits import identity_of
from server.routes.docs import body_doc
from server.safety.requesters import Requester
from server.state import ServerState, state_of

router = APIRouter(tags=["generation"])


async def _serve(request: Request, model: type, prepare: Any, answer: Any = None) -> Response:
    """`prepare(req, engine, settings, admission, key_id)` is the gate, `answer(job, engine, request,
    deadline_frames, **sse_options)` the response (None: chat's and completions', server/pipeline/respond.py)."""
    answer = answer or respond.respond
    state = state_of(request)
    req = parse.parse_request(await request.body(), model, request.headers.get("extra-parameters"), state.settings)
    engine = state.ready_engine()
    exchange = exchange_of(request)
    admission = state.limits.admission_for(exchange)  # admits within `prepare`, before the prompt is tokenised
    tracing.annotate({"gen_ai.request.model": getattr(req, "model", None) or engine.info.name})
    try:
        with tracing.span("gate"):
            job = await prepare(req, engine, state.settings, admission, exchange.key_id)
        deadline = admission.deadline
        assert deadline is not None
        _observe(state, exchange, job, engine)
        _trace(job)
        if state.moderator is not None:
            requester = Requester(identity_of(exchange), lambda tokens: state.limits.charge_tokens(exchange, tokens))
            job.moderation = state.moderator.for_request(job.prompts, job.total_choices, engine, exchange.key_id,
                                                         requester, chat=job.template_messages,
                                                         tools=job.declared_tools)
        # A streamed reply's frames pass through its deadline, which ends the event stream when it passes.
        options = sse.event_stream_options(state.settings.protection.shutdown_grace_s)
        reply = await deadline.within(answer(job, engine, request, deadline.stream, **options))
    except Exception as exc:
        await admission.settle()  # the request is over before its response starts: its headers show the settled state
        if isinstance(exc, EngineError):
            raise engine_error(exc) from exc
        raise
    if not job.stream:
        await admission.settle()
    return reply


def _observe(state: ServerState, exchange: Exchange, job: generation.Job, engine: LlamaEngine) -> None:
    """The access log's request fields now; the token counts as the reply goes, into the metrics at the end."""
    keep_text = state.settings.log_prompts
    exchange.prompt_tokens = sum(len(p) for p in job.prompts)
    exchange.model = job.model_name or engine.info.name
    if keep_text:
        exchange.prompt = [engine.decode(p) for p in job.prompts]
    job.metrics = state.metrics.for_request(exchange, keep_text, adapter=job.model_name)
    exchange.on_end(job.metrics.finish)


def _trace(job: generation.Job) -> None:
    """The request's sampling in the GenAI conventions' names on its span, and its trace context for the engine,
    which joins its own span to it."""
    headers = tracing.carrier()
    if not headers:
        return
    gen = job.engine_input
    tracing.annotate({
        "gen_ai.response.id": job.request_id,
        "gen_ai.request.max_tokens": gen.max_tokens,
        "gen_ai.request.temperature": gen.temperature,
        "gen_ai.request.top_p": gen.top_p,
        "gen_ai.request.top_k": gen.top_k or None,
        "gen_ai.request.frequency_penalty": gen.frequency_penalty,
        "gen_ai.request.presence_penalty": gen.presence_penalty,
        "gen_ai.request.seed": gen.seed,
        "gen_ai.request.stop_sequences": list(gen.stop) or None,
        "gen_ai.request.choice.count": gen.n if gen.n != 1 else None,
        "llamaserve.generation_mode": gen.mode.value,
        "llamaserve.adapter": job.model_name,
        "llamaserve.stream": job.stream,
    })
    job.engine_input = dataclasses.replace(gen, trace_headers=headers)


@router.post("/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
@router.post("/v1/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
@router.post("/openai/v1/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _serve(request, ChatCompletionRequest, generation.prepare_chat)


@router.post("/completions", openapi_extra=body_doc(CompletionRequest))
@router.post("/v1/completions", openapi_extra=body_doc(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _serve(request, CompletionRequest, generation.prepare_completion)


@router.post("/v1/responses", openapi_extra=body_doc(ResponsesRequest))
@router.post("/responses", openapi_extra=body_doc(ResponsesRequest))
@router.post("/openai/v1/responses", openapi_extra=body_doc(ResponsesRequest))
async def create_response(request: Request) -> Response:
    state = state_of(request)
    charge = partial(state.limits.charge_tokens, exchange_of(request))  # a background response's output
    return await _serve(request, ResponsesRequest, partial(responses_gate.prepare_response, store=state.responses),
                        partial(responses_respond.respond, store=state.responses, runs=state.response_runs,
                                charge=charge))

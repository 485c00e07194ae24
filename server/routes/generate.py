"""The four completion routes: Azure's /chat/completions and /completions, OpenAI's and Llama's /v1/ twins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine.errors import EngineError
from schemas import ChatCompletionRequest, CompletionRequest
from server import adapters, generation, parse, respond
from server.errors import engine_error
from server.limits import sse_options
from server.observability import exchange_of
from server.routes.docs import body_doc
from server.state import state_of

router = APIRouter(tags=["generation"])


async def _serve(request: Request, model: type, prepare: Any) -> Response:
    state = state_of(request)
    req = parse.parse_request(await request.body(), model, request.headers.get("extra-parameters"), state.settings)
    engine = state.ready_engine()
    exchange = exchange_of(request)
    adapters.check_access(state.settings, exchange.key_id, req.model, engine)
    try:
        job = await prepare(req, engine, state.settings)
        ticket = await state.limits.admit(job, exchange)
        job.trace = state.metrics.trace(exchange, job, engine, state.settings.log_prompts)
        if state.moderator is not None:
            job.moderation = state.moderator.for_request(job, engine, exchange.key_id)
        reply = respond.respond(job, engine, request, ticket.stream, **sse_options(state.settings))
        return await ticket.within(reply)
    except EngineError as exc:
        raise engine_error(exc) from exc


@router.post("/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
@router.post("/v1/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _serve(request, ChatCompletionRequest, generation.prepare_chat)


@router.post("/completions", openapi_extra=body_doc(CompletionRequest))
@router.post("/v1/completions", openapi_extra=body_doc(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _serve(request, CompletionRequest, generation.prepare_completion)


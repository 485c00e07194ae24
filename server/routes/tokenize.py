"""POST /tokenize and /detokenize (also under /v1).

Both take an admission slot and a request from the rate limits, as generation does, and before the work:
tokenising a few MB is seconds of CPU. Tokens are not charged: nothing is generated.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from engine.errors import EngineError
from schemas.chat import template_messages
from schemas.tokenize import DetokenizeRequest, TokenizeRequest
from server.models import adapters
from server.errors import engine_error
from server.observe.exchange import exchange_of
from server.protection.limits import NO_TOKENS
from server.pipeline.parse import parse_body
from server.routes.docs import body_doc
from server.state import ServerState, state_of
from server.pipeline.validation import check_prompt_chars

router = APIRouter(tags=["tokenizer"])


async def _admit(state: ServerState, request: Request) -> None:
    """One request, no tokens, one slot until the response is sent (the generation routes' `RequestAdmission`)."""
    await state.limits.admission_for(exchange_of(request)).admit(NO_TOKENS)


@router.post("/tokenize", openapi_extra=body_doc(TokenizeRequest))
@router.post("/v1/tokenize", openapi_extra=body_doc(TokenizeRequest))
async def tokenize(request: Request) -> dict:
    state = state_of(request)
    body = parse_body(await request.body(), TokenizeRequest, state.settings)
    engine = state.ready_engine()
    adapters.resolve(state.settings, exchange_of(request).key_id, body.model, engine)
    try:
        if body.messages is not None:
            messages = template_messages(body.messages)
            check_prompt_chars(sum(len(m["content"]) for m in messages), state.settings.api_limits, "messages")
            await _admit(state, request)
            tokens = await engine.encode_chat(messages, max_chars=state.settings.max_prompt_chars)
        else:
            check_prompt_chars(len(body.prompt or ""), state.settings.api_limits, "prompt")
            await _admit(state, request)
            tokens = await engine.encode_text(body.prompt or "", add_special_tokens=body.add_special_tokens)
    except EngineError as exc:
        raise engine_error(exc) from exc
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.info.max_model_len}


@router.post("/detokenize", openapi_extra=body_doc(DetokenizeRequest))
@router.post("/v1/detokenize", openapi_extra=body_doc(DetokenizeRequest))
async def detokenize(request: Request) -> dict:
    state = state_of(request)
    body = parse_body(await request.body(), DetokenizeRequest, state.settings)
    engine = state.ready_engine()
    adapters.resolve(state.settings, exchange_of(request).key_id, body.model, engine)
    try:
        engine.check_token_ids(body.tokens, "tokens")
    except EngineError as exc:
        raise engine_error(exc) from exc
    await _admit(state, request)
    return {"prompt": await engine.decode_text(body.tokens)}

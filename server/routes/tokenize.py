"""POST /tokenize and /detokenize (also under /v1)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from engine.errors import InvalidGenerationRequest
from schemas.chat import template_messages
from schemas.tokenize import DetokenizeRequest, TokenizeRequest
from server import adapters
from server.errors import bad_request
from server.generation import check_model, parse_body
from server.observability import exchange_of
from server.routes.docs import body_doc
from server.state import state_of

router = APIRouter(tags=["tokenizer"])


@router.post("/tokenize", openapi_extra=body_doc(TokenizeRequest))
@router.post("/v1/tokenize", openapi_extra=body_doc(TokenizeRequest))
async def tokenize(request: Request) -> dict:
    body = parse_body(await request.body(), TokenizeRequest)
    state = state_of(request)
    engine = state.ready_engine()
    adapters.check_access(state.settings, exchange_of(request).key_id, body.model, engine)
    check_model(body.model, engine)
    try:
        if body.messages is not None:
            tokens = await engine.encode_chat(template_messages(body.messages))
        else:
            tokens = await engine.encode_text(body.prompt or "", add_special_tokens=body.add_special_tokens)
    except InvalidGenerationRequest as exc:
        raise bad_request(exc.message, exc.param) from exc
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.info.max_model_len}


@router.post("/detokenize", openapi_extra=body_doc(DetokenizeRequest))
@router.post("/v1/detokenize", openapi_extra=body_doc(DetokenizeRequest))
async def detokenize(request: Request) -> dict:
    body = parse_body(await request.body(), DetokenizeRequest)
    state = state_of(request)
    engine = state.ready_engine()
    adapters.check_access(state.settings, exchange_of(request).key_id, body.model, engine)
    check_model(body.model, engine)
    try:
        engine.check_token_ids(body.tokens, "tokens")
    except InvalidGenerationRequest as exc:
        raise bad_request(exc.message, exc.param) from exc
    return {"prompt": engine.decode(body.tokens)}

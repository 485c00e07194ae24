"""Model information and probes."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from server.models import adapters
from server.observe.exchange import exchange_of
from server.protection.security import is_admin
from server.state import state_of

router = APIRouter(tags=["meta"])


@router.get("/info")
async def info(request: Request) -> dict:
    engine = state_of(request).ready_engine()
    return {
        "model_name": engine.info.name,
        "model_type": "chat-completions" if engine.info.is_chat else "text-generation",
        "model_provider_name": engine.info.provider,
    }


@router.get("/v1/models")
async def models(request: Request) -> dict:
    state = state_of(request)
    engine = state.ready_engine()
    caller = exchange_of(request).key_id
    return {
        "object": "list",
        "data": [
            {
                "id": engine.info.name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": engine.info.provider.lower(),
                "max_model_len": engine.info.max_model_len,
            },
            *(adapters.model_card(a, engine, show_root=is_admin(caller)) for a in adapters.visible(state.settings, caller, engine)),
        ],
    }


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness: the process serves and its engine, once loaded, is alive. Loading still counts as alive."""
    state = state_of(request)
    if state.load_error or (state.engine is not None and state.engine.is_dead):
        return JSONResponse({"status": "engine_dead", "error": state.load_error}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: the model is loaded and the server takes new requests."""
    state = state_of(request)
    if state.engine is None or state.draining or state.engine.is_dead:
        reason = "draining" if state.draining else ("loading" if state.engine is None else "engine_dead")
        return JSONResponse({"status": reason}, status_code=503)
    return JSONResponse({"status": "ready"})

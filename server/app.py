"""Builds the FastAPI app: routes, error contract, and the engine's life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine.core import EngineOptions, LlamaEngine
from server import adapters, errors, metrics, model_source
from server.adapter_settings import lora_enabled
from server.limits import BodyLimitMiddleware
from server.observability import RequestContextMiddleware
from server.security import ApiKeyMiddleware, KeyRing, warn_if_open
from schemas import ChatCompletionRequest, CompletionRequest
from schemas.adapters import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from schemas.tokenize import DetokenizeRequest, TokenizeRequest
from server.routes import adapters as adapter_routes
from server.routes import generate, meta, tokenize
from server.routes.docs import document_bodies
from server.settings import Settings
from server.state import ServerState, state_of

log = logging.getLogger("llamaserve")

EngineFactory = Callable[[Settings], LlamaEngine]


def engine_options(settings: Settings) -> EngineOptions:
    source = model_source.resolve(settings)
    fields = settings.model_dump(include=set(EngineOptions.__dataclass_fields__) - {"model", "served_model_name"})
    if source.is_tiny:
        for name, value in model_source.TINY_MODEL_ENGINE_DEFAULTS.items():
            if name not in settings.model_fields_set:
                fields[name] = value
    # Beam search asks for 2 x width alternatives per step.
    fields["max_logprobs"] = max(settings.max_logprobs, 2 * settings.max_best_of)
    fields["enable_lora"] = lora_enabled(settings)
    return EngineOptions(model=source.path, served_model_name=source.served_name, **fields)


def start_engine(settings: Settings) -> LlamaEngine:
    return LlamaEngine.start(engine_options(settings))


async def _load(state: ServerState, factory: EngineFactory) -> None:
    try:
        engine = await asyncio.to_thread(factory, state.settings)
        if state.settings.lora_adapters:
            try:
                await adapters.load_configured(state.settings, engine)
            except BaseException:
                engine.shutdown()
                raise
        state.engine = engine
        log.info("model %s ready", state.engine.info.name)
    except Exception as exc:  # the server stays up to report it on /health and /ready
        log.exception("the model failed to load")
        state.load_error = f"{type(exc).__name__}: {exc}"


def create_app(settings: Settings, engine_factory: EngineFactory = start_engine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_of(app)
        state.loader = asyncio.create_task(_load(state, engine_factory))
        state.lifecycle.start()
        try:
            yield
        finally:
            state.draining = True
            state.loader.cancel()
            await state.lifecycle.stop()
            if state.engine is not None:
                state.engine.shutdown()

    app = FastAPI(title="llamaserve", version="0.1.0", lifespan=lifespan)
    app.state.llama = ServerState(settings=settings)
    errors.install(app)
    _protect(app, app.state.llama)
    app.include_router(meta.router)
    app.include_router(metrics.router)
    app.include_router(generate.router)
    app.include_router(tokenize.router)
    app.include_router(adapter_routes.router)
    document_bodies(app, (ChatCompletionRequest, CompletionRequest, TokenizeRequest, DetokenizeRequest,
                          LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest))
    return app


def _protect(app: FastAPI, state: ServerState) -> None:
    """Outermost first: request id and access log, then the key check, then the body size limit."""
    keys = KeyRing(settings_keys(state.settings))
    warn_if_open(keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.settings.max_request_bytes)
    app.add_middleware(ApiKeyMiddleware, state=state, keys=keys)
    app.add_middleware(RequestContextMiddleware, state=state)  # added last: runs first


def settings_keys(settings: Settings) -> list[str]:
    try:
        return settings.all_api_keys()
    except OSError as exc:  # a missing secret must stop the start, not open the server
        raise RuntimeError(f"cannot read api_key_file {settings.api_key_file}: {exc}") from exc

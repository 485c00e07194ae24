"""Builds the FastAPI app: routes, error contract, and the engine's life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine.core import EngineOptions, LlamaEngine
from server import errors, model_source
from server.routes import generate, meta
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
    return EngineOptions(model=source.path, served_model_name=source.served_name, **fields)


def start_engine(settings: Settings) -> LlamaEngine:
    return LlamaEngine.start(engine_options(settings))


async def _load(state: ServerState, factory: EngineFactory) -> None:
    try:
        state.engine = await asyncio.to_thread(factory, state.settings)
        log.info("model %s ready", state.engine.info.name)
    except Exception as exc:  # the server stays up to report it on /health and /ready
        log.exception("the model failed to load")
        state.load_error = f"{type(exc).__name__}: {exc}"


def create_app(settings: Settings, engine_factory: EngineFactory = start_engine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_of(app)
        state.loader = asyncio.create_task(_load(state, engine_factory))
        try:
            yield
        finally:
            state.draining = True
            state.loader.cancel()
            if state.engine is not None:
                state.engine.shutdown()

    app = FastAPI(title="llamaserve", version="0.1.0", lifespan=lifespan)
    app.state.llama = ServerState(settings=settings)
    errors.install(app)
    app.include_router(meta.router)
    app.include_router(generate.router)
    _document_bodies(app)
    return app


def _document_bodies(app: FastAPI) -> None:
    """Adds the hand-parsed request bodies' schemas to the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in generate.BODY_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]

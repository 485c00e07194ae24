"""Builds the FastAPI app: routes, error contract, and the engine's life cycle."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from engine.core import EngineOptions, LlamaEngine, cache_vllm_environment
from server import errors
from server.models import adapters
from server.models import model_source
from server.adapter_settings import lora_enabled
from server.protection.content_type import JsonBodyMiddleware
from server.protection.lifecycle import MODEL_LOAD_EXIT_CODE
from server.protection.limits import BodyLimitMiddleware
from server.observe import tracing
from server.observe.access_log import RequestContextMiddleware
from server.observe.request_span import RequestSpanMiddleware
from server.protection.security import ApiKeyMiddleware, KeyRing, load_key_source, warn_if_open
from schemas import ChatCompletionRequest, CompletionRequest
from schemas.adapters import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from schemas.responses import ResponsesRequest
from schemas.tokenize import DetokenizeRequest, TokenizeRequest
from server.routes import adapters as adapter_routes
from server.routes import generate, meta, metrics, playground, responses, tokenize
from server.routes.docs import document_bodies
from server.safety.guards import Guard, start_guard
from server.safety.moderation import Moderator
from server.settings import Settings
from server.state import ServerState, state_of

log = logging.getLogger("llamaserve")

EngineFactory = Callable[[Settings], LlamaEngine]
GuardFactory = Callable[[Settings], Guard | None]


def engine_options(settings: Settings) -> EngineOptions:
    source = model_source.resolve(settings)
    e = settings.engine
    if source.is_builtin:
        unset = {k: v for k, v in model_source.TINY_MODEL_ENGINE_DEFAULTS.items() if k not in settings.model_fields_set}
        e = dataclasses.replace(e, **unset)
    return EngineOptions(
        model=source.path,
        served_model_name=source.served_name,
        dtype=e.dtype,
        max_model_len=e.max_model_len,
        tensor_parallel_size=e.tensor_parallel_size,
        pipeline_parallel_size=e.pipeline_parallel_size,
        gpu_memory_utilization=_memory_share(settings),
        quantization=e.quantization,
        kv_cache_dtype=e.kv_cache_dtype,
        max_num_seqs=e.max_num_seqs,
        max_num_batched_tokens=e.max_num_batched_tokens,
        enable_chunked_prefill=e.enable_chunked_prefill,
        enable_prefix_caching=e.enable_prefix_caching,
        long_prefill_token_threshold=e.long_prefill_token_threshold,
        speculative_config=e.speculative_config,
        compilation_config=e.compilation_config,
        engine_args=e.engine_args,
        trust_remote_code=e.trust_remote_code,
        chat_template=e.chat_template,
        enforce_eager=e.enforce_eager,
        distributed_executor_backend=e.distributed_executor_backend,
        cpu_kvcache_space_gib=e.cpu_kvcache_space_gib,
        seed=e.seed,
        process_start_method=e.process_start_method,
        # Beam search asks for 2 x width alternatives per step.
        max_logprobs=max(settings.max_logprobs, 2 * settings.max_best_of),
        enable_lora=lora_enabled(settings),
        max_loras=e.max_loras,
        max_lora_rank=e.max_lora_rank,
        max_cpu_loras=e.max_cpu_loras,
        otlp_traces_endpoint=settings.tracing.endpoint,
        otlp_traces_protocol=settings.tracing.protocol,
    )


def _memory_share(settings: Settings) -> float | None:
    """The main engine's share of GPU memory; unset, vLLM's default, or beside a local guard what the guard leaves
    (two engines at vLLM's default each would ask for more than the GPU has)."""
    share = settings.engine.gpu_memory_utilization
    if share is None and settings.guard == "local":
        return round(1 - settings.guard_gpu_memory_utilization, 4)
    return share


def start_engine(settings: Settings) -> LlamaEngine:
    options = engine_options(settings)
    # vLLM would take a missing directory for a hub id and say only that the id is malformed.
    if options.model.startswith(("/", "./", "../", "~")) and not Path(options.model).expanduser().exists():
        raise FileNotFoundError(f"the model directory {options.model} does not exist")
    engine = LlamaEngine.start(options)
    cache_vllm_environment()  # the guard, if any, started before this engine (_load)
    return engine


def start_configured_guard(settings: Settings) -> Guard | None:
    return None if settings.guard == "off" else start_guard(settings, engine_options(settings))


async def _load(state: ServerState, factory: EngineFactory, guard_factory: GuardFactory) -> None:
    try:
        # The guard first: a server must not turn ready, and serve unchecked, while its guard failed to start.
        guard = await asyncio.to_thread(guard_factory, state.settings)
        if guard is not None:
            state.moderator = Moderator(state.settings, guard, state.metrics.registry)
            log.info("content safety on: guard=%s, checks %s", state.settings.guard, state.settings.guard_check)
        engine = await asyncio.to_thread(factory, state.settings)
        try:
            if state.moderator is not None:
                await state.moderator.check_fit(engine.info.max_model_len)
            if state.settings.lora_adapters:
                await adapters.load_configured(state.settings, engine)
            if state.shared_adapters is not None:
                await state.shared_adapters.catch_up(engine)
            if state.settings.warm_up:
                started = time.monotonic()
                await engine.warm_up()
                log.info("engine warmed up in %.1f s", time.monotonic() - started)
        except BaseException:  # not ready yet, so the lifespan's end does not stop it
            engine.shutdown()
            raise
        state.engine = engine
        log.info("model %s ready", state.engine.info.name)
    except Exception as exc:  # a server without its model serves nothing: exit so that the failure shows
        state.load_error = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever vLLM's message
        log.debug("the model failed to load", exc_info=True)
        log.critical("the model failed to load, exiting with code %d: %s", MODEL_LOAD_EXIT_CODE, state.load_error)
        state.lifecycle.exit_now(MODEL_LOAD_EXIT_CODE)


def create_app(settings: Settings, engine_factory: EngineFactory = start_engine,
               guard_factory: GuardFactory = start_configured_guard, span_exporter: Any = None) -> FastAPI:
    """`span_exporter`: where spans go instead of the OTLP endpoint (tests), which turns tracing on."""
    # Before the engine starts: vLLM records its spans through the global tracer provider this sets.
    traces = tracing.start(settings.tracing, span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_of(app)
        state.loader = asyncio.create_task(_load(state, engine_factory, guard_factory))
        state.lifecycle.start()
        if state.shared_adapters is not None:
            state.background.append(asyncio.create_task(state.shared_adapters.run(lambda: state.engine),
                                                        name="llamaserve-adapter-sync"))
        try:
            yield
        finally:
            state.lifecycle.draining = True
            state.loader.cancel()
            for task in state.background:
                task.cancel()
            await asyncio.gather(*state.background, return_exceptions=True)
            await state.lifecycle.stop()
            await state.response_runs.close()
            if state.engine is not None:
                state.engine.shutdown()
            if state.moderator is not None:
                await state.moderator.close()
            if state.limits.shared is not None:
                await state.limits.shared.finish()
            if state.fleet is not None:
                await state.fleet.close()
            if traces is not None:
                await asyncio.to_thread(traces.shutdown)  # the last spans go out, within the export timeout

    app = FastAPI(title="llamaserve", version="0.1.0", lifespan=lifespan)
    app.state.llama = ServerState(settings=settings)
    errors.install(app)
    _protect(app, app.state.llama)
    if traces is not None:
        app.add_middleware(RequestSpanMiddleware, tracer=traces.tracer)  # outermost: it sees refusals too
    app.include_router(meta.router)
    app.include_router(metrics.router)
    app.include_router(generate.router)
    app.include_router(responses.router)
    app.include_router(tokenize.router)
    app.include_router(playground.router)
    app.include_router(adapter_routes.router)
    document_bodies(app, (ChatCompletionRequest, CompletionRequest, ResponsesRequest, TokenizeRequest,
                          DetokenizeRequest, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest))
    return app


def _protect(app: FastAPI, state: ServerState) -> None:
    """Outermost first: request id and access log, then the key check, then the body's media type and size."""
    keys = load_key_source(state.settings)  # keys asked for but none given: refuses, never serves open
    warn_if_open(keys.current())
    protection = state.settings.protection
    app.add_middleware(BodyLimitMiddleware, max_bytes=protection.max_request_bytes, timeout_s=protection.body_timeout_s)
    app.add_middleware(JsonBodyMiddleware)
    admin_keys = KeyRing([k.get_secret_value() for k in state.settings.admin_api_keys])
    app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_require_key=protection.metrics_require_key,
                       admin_keys=admin_keys)
    # added last: runs first
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, log_prompts=state.settings.log_prompts)

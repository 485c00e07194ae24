"""What the running app holds. It lives on `app.state.llama`; there is no module-level state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import FastAPI, Request

from engine.adapter_activity import AdapterReading
from engine.core import LlamaEngine
from server.errors import APIError
from server.fleet.adapters import SharedAdapters
from server.fleet.link import RedisLink
from server.fleet.rates import RedisBuckets
from server.fleet.responses import RedisResponseStore
from server.protection.lifecycle import Lifecycle
from server.protection.limits import Limits
from server.observe.metrics import Metrics
from server.pipeline.responses.background import BackgroundRuns
from server.safety.moderation import Moderator
from server.settings import Settings
from server.store.responses import MemoryResponseStore, ResponseStore


@dataclass
class ServerState:
    settings: Settings
    engine: LlamaEngine | None = None
    load_error: str | None = None
    moderator: Moderator | None = None  # content safety, when a guard is configured
    loader: asyncio.Task | None = None
    background: list[asyncio.Task] = field(default_factory=list)
    response_runs: BackgroundRuns = field(init=False)  # background responses this process generates
    metrics: Metrics = field(default_factory=Metrics)
    limits: Limits = field(init=False)
    lifecycle: Lifecycle = field(init=False)
    fleet: RedisLink | None = field(init=False)  # the replicas' shared Redis, when one is set
    responses: ResponseStore = field(init=False)
    shared_adapters: SharedAdapters | None = field(init=False)  # runtime LoRA adapters, with a fleet

    def __post_init__(self) -> None:
        protection = self.settings.protection
        url = self.settings.shared_state_url()
        self.fleet = RedisLink(url, self.settings.redis_timeout_s) if url else None
        bounds = (self.settings.responses_store_max_count, self.settings.responses_store_max_age_s)
        self.responses = (RedisResponseStore(self.fleet, *bounds, deployment=self.settings.shared_state_name())
                          if self.fleet else MemoryResponseStore(*bounds))
        self.shared_adapters = (SharedAdapters(self.fleet, self.settings.adapter_sync_interval_s,
                                               self.settings.shared_state_name())
                                if self.fleet and self.settings.allow_runtime_lora else None)
        self.limits = Limits(protection)
        self.response_runs = BackgroundRuns(protection.request_timeout_s, self.limits.admission)
        if self.fleet is not None:
            self.metrics.registry.register(self.fleet.collector())
            link = self.fleet
            self.limits.share(RedisBuckets(link, self.settings.shared_state_name()),
                              self.settings.rate_limit_fallback_s, lambda: link.fell_back("rate_limits"))
        self.lifecycle = Lifecycle(self.limits, protection.shutdown_grace_s, self._engine_is_dead)
        self.metrics.watch(self._readings)
        self.metrics.watch_adapters(self._adapter_reading)

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    def _engine_is_dead(self) -> bool:
        return self.engine is not None and self.engine.is_dead

    def _readings(self) -> list[tuple[str, str, float]]:
        engine_in_flight = 0 if self.engine is None or self.engine.is_dead else self.engine.num_unfinished_requests()
        return [
            *self.limits.readings(),
            ("llamaserve_engine_requests_in_flight", "requests the engine holds (running or waiting)", engine_in_flight),
        ]

    def _adapter_reading(self) -> AdapterReading | None:
        activity = None if self.engine is None or self.engine.is_dead else self.engine.adapter_activity
        return None if activity is None else activity.reading()

    def ready_engine(self) -> LlamaEngine:
        """The engine, if it can take a request now; else the 503 that says why not."""
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
        if self.engine is None:
            message = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise APIError(503, message, code="model_not_ready", headers={"Retry-After": "10"})
        if self.engine.is_dead:
            raise APIError(503, "the engine is not running", code="engine_unavailable", headers={"Retry-After": "5"})
        return self.engine


def state_of(app_or_request: FastAPI | Request) -> ServerState:
    app = app_or_request.app if isinstance(app_or_request, Request) else app_or_request
    return app.state.llama

"""Prometheus metrics: ours live in a registry owned by the app; /metrics (server/routes/metrics.py) renders it
plus the global one.

vLLM's AsyncLLM registers its own metrics (vllm:num_requests_running, vllm:kv_cache_usage_perc, ...) in
prometheus_client's global REGISTRY in this process, so rendering both shows the engine's view next to ours.
"""

from __future__ import annotations

import copy
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from engine.adapter_activity import AdapterReading
    from engine.outputs import Step
    from server.observe.exchange import Exchange

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5)


# vLLM's own series of this name leaves out adapters whose requests all wait (engine/adapter_activity.py): /metrics
# shows the engine's reading in its place, as the endpoint picker reads it (one sample, valued with the time).
LORA_INFO = "vllm:lora_requests_info"
LORA_INFO_LABELS = ("max_lora", "waiting_lora_adapters", "running_lora_adapters")

# Series that exist to name LoRA adapters (ours by `model`, vLLM's by its running and waiting lists): only an
# admin reader sees them, since a tenant must not learn of another tenant's fine-tune.
ADAPTER_FAMILIES = frozenset({"llamaserve_adapter_requests", "llamaserve_adapter_prompt_tokens",
                              "llamaserve_adapter_completion_tokens", "vllm:lora_requests_info"})


class _WithoutAdapters:
    """A registry's families less the adapter families and any sample with an adapter's name in a label."""

    def __init__(self, registry: Collector, names: set[str]):
        self._registry, self._names = registry, names

    def collect(self) -> Iterable:
        for family in self._registry.collect():
            if family.name in ADAPTER_FAMILIES:
                continue
            kept = [s for s in family.samples if not any(self._names_one(v) for v in s.labels.values())]
            if len(kept) != len(family.samples):
                family = copy.copy(family)
                family.samples = kept
            yield family

    def _names_one(self, value: str) -> bool:
        return value in self._names or any(part in self._names for part in value.split(","))


class _Without:
    """A registry's families less those named."""

    def __init__(self, registry: Collector, names: set[str]):
        self._registry, self._names = registry, names

    def collect(self) -> Iterable:
        return (family for family in self._registry.collect() if family.name not in self._names)


class _AdapterInfo:
    def __init__(self, reading: Callable[[], AdapterReading | None]):
        self._reading = reading

    def collect(self) -> Iterable[GaugeMetricFamily]:
        reading = self._reading()
        if reading is None:  # LoRA off, or no engine
            return
        family = GaugeMetricFamily(LORA_INFO, "LoRA adapters with requests running or waiting in the engine; "
                                   "the value is the time of the reading", labels=LORA_INFO_LABELS)
        family.add_metric([str(reading.max_loras), ",".join(reading.waiting), ",".join(reading.running)], time.time())
        yield family


class _Gauges:
    """Gauges read at scrape time, so they can never drift from what they count."""

    def __init__(self, readings: Callable[[], Iterable[tuple[str, str, float]]]):
        self._readings = readings

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, doc, value in self._readings():
            yield GaugeMetricFamily(name, doc, value=value)


class TokenHistogram:
    """An unlabelled histogram for observations made per token: one bisect and two additions, where
    prometheus_client's Histogram takes a lock for its sum and for each bucket (about 2% of a stream's CPU).
    Observed and collected on the event loop's thread only, so it needs no lock."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]):
        self._name, self._doc = name, documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # a bucket counts values <= its bound
        self._sum += value

    def collect(self) -> Iterable[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip([*self._bounds, math.inf], self._counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=self._sum)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "llamaserve_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.rejected = Counter("llamaserve_rejected_requests", "requests refused, by reason", ["reason"], registry=r)
        self.latency = Histogram(
            "llamaserve_e2e_request_latency_seconds", "arrival to last byte, by route", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = TokenHistogram(
            "llamaserve_time_to_first_token_seconds", "arrival to the first generated token (streamed requests)",
            _LATENCY_BUCKETS,
        )
        self.itl = TokenHistogram(
            "llamaserve_inter_token_latency_seconds", "time between consecutive engine steps of a streamed request",
            _TOKEN_LATENCY_BUCKETS,
        )
        r.register(self.ttft)
        r.register(self.itl)
        self.prompt_tokens = Counter("llamaserve_prompt_tokens", "prompt tokens of finished generation requests", registry=r)
        self.completion_tokens = Counter(
            "llamaserve_completion_tokens", "tokens generated for finished or cut-off requests", registry=r
        )
        self.cached_prompt_tokens = Counter(
            "llamaserve_cached_prompt_tokens", "prompt tokens the engine's prefix cache held (counted in prompt_tokens)",
            registry=r,
        )
        self.adapter_requests = Counter(
            "llamaserve_adapter_requests", "generation requests on a LoRA adapter", ["model"], registry=r
        )
        self.adapter_prompt_tokens = Counter(
            "llamaserve_adapter_prompt_tokens", "prompt tokens of requests on a LoRA adapter", ["model"], registry=r
        )
        self.adapter_completion_tokens = Counter(
            "llamaserve_adapter_completion_tokens", "tokens generated on a LoRA adapter", ["model"], registry=r
        )

    def watch(self, readings: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        """Adds gauges computed at scrape time from (name, help, value) readings."""
        self.registry.register(_Gauges(readings))

    def watch_adapters(self, reading: Callable[[], AdapterReading | None]) -> None:
        """Shows the engine's adapter activity, read at scrape time, as vllm:lora_requests_info."""
        self.registry.register(_AdapterInfo(reading))

    def render(self, hide_adapters: set[str] | None = None) -> bytes:
        """Every series; with `hide_adapters`, none that names an adapter (those names, or any adapter family)."""
        if hide_adapters is None:
            return generate_latest(self.registry) + generate_latest(_Without(REGISTRY, {LORA_INFO}))
        return (generate_latest(_WithoutAdapters(self.registry, hide_adapters))
                + generate_latest(_WithoutAdapters(REGISTRY, hide_adapters)))

    def for_request(self, exchange: Exchange, keep_text: bool, adapter: str | None = None) -> RequestMetrics:
        """Follows an admitted generation request; its counts reach the metrics and access log at `finish`."""
        return RequestMetrics(self, exchange, keep_text, adapter=adapter)


class RequestMetrics:
    """One generation request's token timings and counts; it also fills the access log's token fields."""

    def __init__(self, metrics: Metrics, exchange: Exchange, keep_text: bool, adapter: str | None = None):
        self._metrics = metrics
        self._adapter = adapter
        self._exchange = exchange
        self._last: float | None = None
        self._per_prompt: dict[int, int] = {}
        self._cached: dict[int, int] = {}  # per prompt, the prefix cache's hit
        self._texts: dict[int, list[str]] | None = {} if keep_text else None

    def step(self, prompt_index: int, step: Step) -> None:
        """A streamed engine step (before its choice indices are shifted by the prompt index)."""
        self._cached[prompt_index] = max(self._cached.get(prompt_index, 0), step.cached_tokens)
        new_tokens = step.completion_tokens - self._per_prompt.get(prompt_index, 0)
        if new_tokens:
            now = time.perf_counter()
            if self._last is None:
                self._metrics.ttft.observe(now - self._exchange.started)
            else:
                self._metrics.itl.observe(now - self._last)
            self._last = now
            self._per_prompt[prompt_index] = step.completion_tokens
            self._exchange.completion_tokens = (self._exchange.completion_tokens or 0) + new_tokens
        self._exchange.finish_reasons += [c.finish_reason for c in step.choices if c.finish_reason is not None]
        if self._texts is not None:
            for c in step.choices:
                self._texts.setdefault((prompt_index, c.index), []).append(c.text)

    def full(self, steps: list[Step]) -> None:
        self._exchange.completion_tokens = sum(s.completion_tokens for s in steps)
        self._cached = {p: s.cached_tokens for p, s in enumerate(steps)}
        self._exchange.finish_reasons = [c.finish_reason for s in steps for c in s.choices if c.finish_reason]
        if self._texts is not None:
            for p, s in enumerate(steps):
                for c in s.choices:
                    self._texts[(p, c.index)] = [c.text]

    def finish(self) -> None:
        ex = self._exchange
        self._metrics.prompt_tokens.inc(ex.prompt_tokens or 0)
        self._metrics.completion_tokens.inc(ex.completion_tokens or 0)
        self._metrics.cached_prompt_tokens.inc(sum(self._cached.values()))
        if self._adapter is not None:
            m = self._metrics
            m.adapter_requests.labels(self._adapter).inc()
            m.adapter_prompt_tokens.labels(self._adapter).inc(ex.prompt_tokens or 0)
            m.adapter_completion_tokens.labels(self._adapter).inc(ex.completion_tokens or 0)
        if self._texts is not None:
            ex.output = ["".join(parts) for _, parts in sorted(self._texts.items())]


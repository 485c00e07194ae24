"""OpenTelemetry traces: where spans go, and the child spans every layer opens inside a request's span.

Off (no OTLP endpoint set, server/tracing_settings.py) nothing is started: `span()` is a shared no-op context and
`carrier()` empty, so tracing costs a module-global check per call site. On, one `TracerProvider` exports through a
bounded queue in a thread of its own (the SDK's BatchSpanProcessor): a slow or absent collector drops spans, never
slows a request. It is made the process's global provider, since vLLM's engine records its `llm_request` span
through the global one: that span, and ours, then share one resource (service.name) and one sampler.

The request's own SERVER span is opened by server/observe/request_span.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.tracing_settings import TracingSettings

log = logging.getLogger("llamaserve")

INSTRUMENTATION = "llamaserve"
PROPAGATOR = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[None] = nullcontext()
_tracer: Tracer | None = None


class Tracing:
    """The started tracer: its provider flushes and stops with the server."""

    def __init__(self, provider: Any, tracer: Tracer):
        self.provider = provider
        self.tracer = tracer

    def shutdown(self) -> None:
        global _tracer
        if _tracer is self.tracer:
            _tracer = None
        self.provider.shutdown()


def start(cfg: TracingSettings, exporter: Any = None) -> Tracing | None:
    """Starts tracing when `cfg` names an endpoint (or an `exporter` is given instead: the tests' in-memory one,
    which is not made global). None when tracing is off."""
    if exporter is None and not cfg.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    if exporter is None:
        exporter = _otlp_exporter(cfg)
        trace.set_tracer_provider(provider)
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=cfg.max_queue_size, max_export_batch_size=min(512, cfg.max_queue_size),
        export_timeout_millis=cfg.export_timeout_s * 1000))
    global _tracer
    _tracer = provider.get_tracer(INSTRUMENTATION)
    log.info("tracing on: OTLP %s to %s, sampling %g of new traces", cfg.protocol, cfg.endpoint, cfg.sample_ratio)
    return Tracing(provider, _tracer)


def _otlp_exporter(cfg: TracingSettings) -> Any:
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=cfg.endpoint, insecure=not str(cfg.endpoint).startswith("https://"),
                            timeout=cfg.export_timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=cfg.endpoint, timeout=cfg.export_timeout_s)


def tracer() -> Tracer | None:
    """The tracer, or None when tracing is off."""
    return _tracer


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A child span of the current one for a step of the request (`with span("admission"):`); an exception that
    leaves it marks it failed with its type. A no-op when tracing is off or the request is not sampled."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return _OFF
    return _child(_tracer, name, attributes)


@contextmanager
def _child(tracer: Tracer, name: str, attributes: Mapping[str, Any] | None) -> Iterator[Span]:
    with tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as child:
        try:
            yield child
        except BaseException as exc:
            failed(child, _error_type(exc), str(exc))
            raise


def annotate(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (inside `span()`: that child), when it is recorded."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def failed(target: Span, error_type: str, message: str = "") -> None:
    target.set_attribute("error.type", error_type)
    target.set_status(StatusCode.ERROR, message[:200] or None)


def _error_type(exc: BaseException) -> str:
    """An API refusal by its code (the error body's `code`), anything else by its class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


def carrier() -> dict[str, str]:
    """The current span's W3C trace context as headers, for the engine (vLLM joins its span to it); empty when
    tracing is off. An unsampled request's context goes too: vLLM's span then follows its decision."""
    if _tracer is None:
        return {}
    headers: dict[str, str] = {}
    PROPAGATOR.inject(headers)
    return headers

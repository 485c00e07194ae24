"""Where the server's traces go (OpenTelemetry, OTLP): part of the flat `server.settings.Settings`.

Off unless an OTLP traces endpoint is set. Each field falls back to OpenTelemetry's own environment variables
(the same names every OpenTelemetry SDK reads), so a deployment that already sets OTEL_* for its other services
needs nothing of llamaserve's own; a LLAMASERVE_* variable, a flag or the YAML file wins over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator

Protocol = Literal["http/protobuf", "grpc"]

# The OTLP exporters' path for traces on a collector's HTTP port; OTEL_EXPORTER_OTLP_ENDPOINT is the collector's
# base URL, to which an HTTP exporter adds it (OpenTelemetry's exporter specification).
_HTTP_TRACES_PATH = "/v1/traces"


def _protocol_from_env() -> Protocol:
    value = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return "grpc" if (value or "").strip() == "grpc" else "http/protobuf"


def _endpoint_from_env() -> str | None:
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return None
    return base if _protocol_from_env() == "grpc" else base.rstrip("/") + _HTTP_TRACES_PATH


def _ratio_from_env() -> float:
    """OTEL_TRACES_SAMPLER's ratio: always_on and parentbased_always_on 1, *always_off 0, *traceidratio its
    OTEL_TRACES_SAMPLER_ARG (1 when unset or unreadable, as the SDK does)."""
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        try:
            ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
        except ValueError:
            return 1.0
        return ratio if 0.0 <= ratio <= 1.0 else 1.0
    return 1.0


class TracingFields(BaseModel):
    otlp_traces_endpoint: str | None = Field(
        default_factory=_endpoint_from_env,
        description="OTLP collector for traces (http/protobuf: http://HOST:4318/v1/traces, grpc: http://HOST:4317); "
        "unset: no tracing. Falls back to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    otlp_traces_protocol: Protocol = Field(
        default_factory=_protocol_from_env,
        description="OTLP transport: http/protobuf or grpc (falls back to OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL)",
    )
    trace_sample_ratio: float = Field(
        default_factory=_ratio_from_env, ge=0, le=1,
        description="share of new traces recorded; a caller's traceparent decides for its own trace "
        "(falls back to OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG)",
    )
    trace_service_name: str = Field(
        default_factory=lambda: os.environ.get("OTEL_SERVICE_NAME", "").strip() or "llamaserve",
        min_length=1, description="the service.name traces carry (falls back to OTEL_SERVICE_NAME)",
    )
    trace_max_queue_size: int = Field(
        2048, ge=1, description="finished spans held for export; when the collector is slow or down, more are dropped"
    )
    trace_export_timeout_s: float = Field(5, gt=0, description="time limit of one export to the collector")

    @field_validator("otlp_traces_endpoint")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        """An empty endpoint (a chart's or deployment's placeholder) is no endpoint: OpenTelemetry's own variables
        may still name one."""
        value = (value or "").strip()
        return value or _endpoint_from_env()

    @property
    def tracing(self) -> TracingSettings:
        return TracingSettings(self.otlp_traces_endpoint, self.otlp_traces_protocol, self.trace_sample_ratio,
                               self.trace_service_name, self.trace_max_queue_size, self.trace_export_timeout_s)


@dataclass(frozen=True)
class TracingSettings:
    """What server/observe/tracing.py is started with."""

    endpoint: str | None
    protocol: Protocol
    sample_ratio: float
    service_name: str
    max_queue_size: int
    export_timeout_s: float

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

"""The tracing settings: off by default, OpenTelemetry's OTEL_* variables honoured, llamaserve's own names first."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_off_by_default(clean_env):
    t = Settings().tracing
    assert not t.enabled and t.endpoint is None
    assert (t.protocol, t.sample_ratio, t.service_name) == ("http/protobuf", 1.0, "llamaserve")


def test_the_standard_variables_turn_it_on(clean_env):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    clean_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    clean_env.setenv("OTEL_SERVICE_NAME", "llama-eu")
    t = Settings().tracing
    # The base endpoint gets the traces path, as OpenTelemetry's HTTP exporters add it.
    assert (t.endpoint, t.sample_ratio, t.service_name, t.enabled) == (
        "http://collector:4318/v1/traces", 0.25, "llama-eu", True)
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces")
    assert Settings().tracing.endpoint == "http://traces:4318/v1/traces"


def test_grpc_takes_the_base_endpoint_as_it_is(clean_env):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    t = Settings().tracing
    assert (t.endpoint, t.protocol) == ("http://collector:4317", "grpc")


@pytest.mark.parametrize(("sampler", "arg", "ratio"), [
    ("always_off", None, 0.0), ("parentbased_always_off", None, 0.0), ("always_on", "0.5", 1.0),
    ("traceidratio", "0.1", 0.1), ("traceidratio", "seven", 1.0), ("traceidratio", "2", 1.0),
])
def test_the_sampler_variables_give_the_ratio(clean_env, sampler, arg, ratio):
    clean_env.setenv("OTEL_TRACES_SAMPLER", sampler)
    if arg is not None:
        clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    assert Settings().tracing.sample_ratio == ratio


def test_llamaserves_own_settings_win(clean_env):
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://otel:4318/v1/traces")
    clean_env.setenv("OTEL_SERVICE_NAME", "from-otel")
    clean_env.setenv("LLAMASERVE_OTLP_TRACES_ENDPOINT", "http://mine:4318/v1/traces")
    clean_env.setenv("LLAMASERVE_TRACE_SAMPLE_RATIO", "0.5")
    s = Settings(trace_service_name="from-flag")
    assert (s.tracing.endpoint, s.tracing.sample_ratio, s.tracing.service_name) == (
        "http://mine:4318/v1/traces", 0.5, "from-flag")


def test_a_ratio_outside_zero_to_one_is_refused(clean_env):
    with pytest.raises(ValidationError, match="trace_sample_ratio"):
        Settings(trace_sample_ratio=1.5)


def test_an_empty_endpoint_is_unset(clean_env):
    clean_env.setenv("LLAMASERVE_OTLP_TRACES_ENDPOINT", "")
    assert not Settings().tracing.enabled
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://otel:4318/v1/traces")
    assert Settings().tracing.endpoint == "http://otel:4318/v1/traces"


def test_the_protocol_picks_the_exporter(clean_env):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    from server.observe.tracing import _otlp_exporter

    grpc = _otlp_exporter(Settings(otlp_traces_endpoint="http://c:4317", otlp_traces_protocol="grpc").tracing)
    http = _otlp_exporter(Settings(otlp_traces_endpoint="http://c:4318/v1/traces").tracing)
    try:
        assert isinstance(grpc, GrpcExporter) and isinstance(http, HttpExporter)
        assert http._endpoint == "http://c:4318/v1/traces"
    finally:
        grpc.shutdown()
        http.shutdown()

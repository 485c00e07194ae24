"""Traces in the deployment files: the chart's `tracing` values and the Azure ML deployments' variables reach the
server as the tracing settings, off until an endpoint is given."""

from __future__ import annotations

from pathlib import Path

import yaml

from server.settings import load_settings
from tests.deploy.test_deploy_helm import pod_templates, render, rendered_settings

ROOT = Path(__file__).resolve().parents[2]
AZURE_FILES = sorted((ROOT / "deploy" / "azureml").glob("*/*.yml"))
TEMPO = "http://tempo.monitoring.svc:4318/v1/traces"


def test_the_chart_traces_nothing_until_given_an_endpoint(clean_env):
    for _, spec in pod_templates(render({})):
        names = {e["name"] for e in spec["containers"][0]["env"]}
        assert not any("TRACE" in n for n in names)
        assert not rendered_settings(spec, clean_env).tracing.enabled


def test_the_charts_tracing_values_become_the_servers_settings(clean_env):
    docs = render({"tracing": {"endpoint": TEMPO, "sampleRatio": 0.25}})
    [(_, spec)] = pod_templates(docs)
    t = rendered_settings(spec, clean_env).tracing
    assert (t.endpoint, t.protocol, t.sample_ratio, t.service_name) == (TEMPO, "http/protobuf", 0.25, "rel-llamaserve")
    docs = render({"tracing": {"endpoint": "http://collector:4317", "protocol": "grpc", "serviceName": "eu-llama"}})
    [(_, spec)] = pod_templates(docs)
    t = rendered_settings(spec, clean_env).tracing
    assert (t.endpoint, t.protocol, t.sample_ratio, t.service_name) == ("http://collector:4317", "grpc", 0.1, "eu-llama")


def test_every_azure_deployment_has_the_tracing_variables_off(clean_env):
    assert AZURE_FILES
    for path in AZURE_FILES:
        if path.name == "endpoint.yml":
            continue
        env = yaml.safe_load(path.read_text())["environment_variables"]
        for name in ("LLAMASERVE_OTLP_TRACES_ENDPOINT", "LLAMASERVE_TRACE_SAMPLE_RATIO"):
            clean_env.setenv(name, env[name])
        t = load_settings().tracing
        assert not t.enabled and t.sample_ratio == 0.1, path.name
        clean_env.setenv("LLAMASERVE_OTLP_TRACES_ENDPOINT", TEMPO)
        assert load_settings().tracing.endpoint == TEMPO

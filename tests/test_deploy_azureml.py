"""Azure ML managed online endpoint files: required fields, routes and port the server uses, Azure's limits,
and each deployment serving its preset on the instance hardware.yaml names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT / "deploy" / "azureml"
PRESETS = ROOT / "configs" / "presets"
HARDWARE = yaml.safe_load((PRESETS / "hardware.yaml").read_text())
PORT = Settings.model_fields["port"].default
AZURE_MAX_TIMEOUT_MS = 180_000  # managed online endpoints reject larger request_timeout_ms
DEPLOYMENTS = sorted((AZURE / "deployments").glob("*.yml"))


def test_endpoint_file():
    endpoint = yaml.safe_load((AZURE / "endpoint.yml").read_text())
    assert endpoint["$schema"].endswith("managedOnlineEndpoint.schema.json")
    assert endpoint["auth_mode"] in ("key", "aml_token")
    assert endpoint["name"]


def test_one_deployment_per_preset():
    assert {p.stem for p in DEPLOYMENTS} == set(HARDWARE)


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.stem)
def test_deployment_fields_routes_and_limits(path):
    d = yaml.safe_load(path.read_text())
    endpoint = yaml.safe_load((AZURE / "endpoint.yml").read_text())
    assert d["$schema"].endswith("managedOnlineDeployment.schema.json")
    for field in ("name", "endpoint_name", "model", "environment", "instance_type", "instance_count"):
        assert d.get(field), field
    assert d["endpoint_name"] == endpoint["name"]
    assert 3 <= len(d["name"]) <= 32 and d["name"].replace("-", "").isalnum() and d["name"][0].isalpha()

    env = d["environment"]
    assert env["image"]
    routes = env["inference_config"]
    assert routes["liveness_route"] == {"port": PORT, "path": "/health"}
    assert routes["readiness_route"] == {"port": PORT, "path": "/ready"}
    assert routes["scoring_route"] == {"port": PORT, "path": "/v1/chat/completions"}

    req = d["request_settings"]
    assert 0 < req["request_timeout_ms"] <= AZURE_MAX_TIMEOUT_MS
    assert req["max_concurrent_requests_per_instance"] > 1, "Azure's default of 1 would serialise a batching engine"
    server_timeout_ms = float(d["environment_variables"]["LLAMASERVE_REQUEST_TIMEOUT_S"]) * 1000
    assert server_timeout_ms < req["request_timeout_ms"], "the server must give up before Azure's gateway does"

    for probe in ("liveness_probe", "readiness_probe"):
        p = d[probe]
        assert {"initial_delay", "period", "timeout", "failure_threshold"} <= p.keys()
        assert p["timeout"] < p["period"] or probe == "readiness_probe"


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.stem)
def test_deployment_serves_its_preset_on_its_instance(path, clean_env):
    d = yaml.safe_load(path.read_text())
    hw = HARDWARE[path.stem]
    assert d["instance_type"] == hw["azure_instance_type"]

    env = d["environment_variables"]
    assert all(isinstance(v, str) for v in env.values()), "Azure wants string environment values"
    assert "LLAMASERVE_MODEL" not in env, "left unset so that the server serves AZUREML_MODEL_DIR"
    assert not any("KEY" in k or "TOKEN" in k for k in env), "no secrets in deployment YAML"
    assert env["LLAMASERVE_ALLOW_UNAUTHENTICATED"] == "true", "Azure checks the key; without it the server won't start"
    skip = {"config", "model", "request_timeout_s", "allow_unauthenticated"}
    want = load_settings(config=PRESETS / f"{path.stem}.yaml").model_dump(exclude=skip)
    for name, value in env.items():
        clean_env.setenv(name, value)
    got = load_settings().model_dump(exclude=skip)
    assert got == want
    assert got["tensor_parallel_size"] * got["pipeline_parallel_size"] == hw["gpus"]


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.stem)
def test_readiness_waits_for_the_model_to_load(path):
    d = yaml.safe_load(path.read_text())
    ready = d["readiness_probe"]
    budget_s = ready["initial_delay"] + ready["period"] * ready["failure_threshold"]
    assert budget_s >= HARDWARE[path.stem]["load_minutes"] * 60
    # /health answers during loading, so liveness may start early; it must still tolerate a slow reply or two.
    live = d["liveness_probe"]
    assert live["failure_threshold"] * live["period"] >= 60


def test_guide_names_the_files():
    guide = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert "deploy/azureml/endpoint.yml" in guide
    assert "deploy/azureml/deployments/" in guide

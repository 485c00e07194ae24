"""Azure ML managed online endpoint files: required fields, routes and port the server uses, Azure's limits,
and each deployment serving its preset on the instance hardware.yaml names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from fastapi.routing import APIRoute

from server.errors import APIError
from server.protection.limits import Limits
from server.protection.rates import RateLimiter
from server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
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
    assert routes["scoring_route"] == {"port": PORT, "path": "/"}

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
    # API keys, HF_TOKEN and the like; a count such as MAX_NUM_BATCHED_TOKENS is no secret.
    assert not any(k.endswith(("KEY", "KEYS", "TOKEN")) for k in env), "no secrets in deployment YAML"
    assert env["LLAMASERVE_ALLOW_UNAUTHENTICATED"] == "true", "Azure checks the key; without it the server won't start"
    skip = {"config", "model", "request_timeout_s", "rate_limit_rpm", "rate_limit_tpm", "allow_unauthenticated",
            "otlp_traces_endpoint", "trace_sample_ratio"}
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


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.stem)
def test_the_gateways_callers_are_not_throttled_as_one(path, clean_env):
    # Azure checks the key and keeps the quota; every request reaches the container from the gateway's address.
    # With the server's limiter on, requests of max_model_len tokens from the gateway's one address: the second 429s.
    d = yaml.safe_load(path.read_text())
    for name, value in d["environment_variables"].items():
        clean_env.setenv(name, value)
    settings = load_settings()
    limits = Limits(settings)
    assert not limits.rates, "the per-key limiter must be off behind Azure's gateway"
    limiter = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm)
    for _ in range(50):
        limiter.charge("addr:10.0.0.4", settings.max_model_len)


def test_the_limiter_as_configured_by_default_would_refuse_the_second_request(clean_env):
    # The failure the test above guards against, on the 131k-context 8B preset with the default limits.
    settings = load_settings(config=PRESETS / "llama-3.1-8b-instruct.yaml")
    limiter = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm)
    with pytest.raises(APIError) as err:
        for _ in range(2):
            limiter.charge("addr:10.0.0.4", settings.max_model_len)
    assert err.value.status == 429


def test_every_api_route_is_reachable_under_the_scoring_route(clean_env):
    # Azure forwards <scoring URI><rest> to <scoring_route.path><rest>: only routes below that path are reachable.
    from server.app import create_app  # imports vLLM: only this test pays for it

    app = create_app(load_settings())
    api_routes = {r.path for r in app.routes if isinstance(r, APIRoute) and r.path not in ("/health", "/ready")}
    assert {"/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/info", "/v1/models"} <= api_routes
    for path in DEPLOYMENTS:
        scoring = yaml.safe_load(path.read_text())["environment"]["inference_config"]["scoring_route"]["path"]
        prefix = scoring.rstrip("/") + "/"
        unreachable = sorted(r for r in api_routes if not r.startswith(prefix))
        assert not unreachable, f"{path.stem}: {unreachable} are not reachable under {scoring}"


def test_each_preset_has_its_own_environment_versioned_with_the_image():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    names = set()
    for path in DEPLOYMENTS:
        env = yaml.safe_load(path.read_text())["environment"]
        assert env["name"] == f"llamaserve-{path.stem.replace('.', '-')}"
        assert env["version"] == version, "environment version follows the image it names"
        assert env["image"].rsplit(":", 1)[1] == version
        names.add(env["name"])
    assert len(names) == len(DEPLOYMENTS), "presets sharing one environment overwrite each other's image"


def test_weight_downloads_skip_metas_original_checkpoints():
    # meta-llama repos also hold original/*.pth (consolidated PyTorch shards): ~800 GB more for 405B.
    guide = (ROOT / "docs" / "DEPLOY.md").read_text()
    downloads = [line for line in guide.splitlines() if re.search(r"\bhf download meta-llama/", line)]
    assert downloads
    for line in downloads:
        assert re.search(r"--exclude ['\"]original/\*['\"]", line), line


GUARD_DEPLOYMENT = AZURE / "with-guard" / "llama-3.1-8b-instruct-guard-3-1b.yml"


@pytest.mark.parametrize("layout", [
    "",  # the registered folder's content at the mount's root
    "models",  # under the uploaded folder's name
    "llama-3-1-8b-with-guard/1/models",  # under the model's NAME/VERSION as well
], ids=["flat", "folder", "name-version-folder"])
def test_guard_deployment_finds_both_models_wherever_azure_mounts_them(layout, tmp_path, clean_env):
    from server.app import engine_options  # imports vLLM: only this test pays for it
    from server.models.model_source import resolve
    from server.safety.guards import local_guard_options

    env = yaml.safe_load(GUARD_DEPLOYMENT.read_text())["environment_variables"]
    mount = tmp_path / "azureml-models"
    dirs = {}
    for name in ("Llama-3.1-8B-Instruct", "Llama-Guard-3-1B"):
        dirs[name] = mount / layout / name
        dirs[name].mkdir(parents=True)
        (dirs[name] / "config.json").write_text("{}")
    for name, value in env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AZUREML_MODEL_DIR", str(mount))
    settings = load_settings()
    assert resolve(settings).path == str(dirs["Llama-3.1-8B-Instruct"])
    assert local_guard_options(settings, engine_options(settings)).model == str(dirs["Llama-Guard-3-1B"])


def test_relative_model_names_fall_back_to_what_was_given(tmp_path, clean_env):
    from server.models.model_source import under_azure_dir

    (tmp_path / "models" / "Other").mkdir(parents=True)
    (tmp_path / "models" / "Other" / "config.json").write_text("{}")
    assert under_azure_dir("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"  # no Azure
    clean_env.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    assert under_azure_dir("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"  # a hub id
    assert under_azure_dir("/abs/Other") == "/abs/Other"
    assert under_azure_dir("Other") == str(tmp_path / "models" / "Other")
    assert under_azure_dir("ther") == "ther", "a whole folder name, not part of one"


@pytest.mark.parametrize("path", [*DEPLOYMENTS, GUARD_DEPLOYMENT], ids=lambda p: p.stem)
def test_compile_caches_are_on_the_images_cache_volume(path):
    from tests.deploy.test_deploy_docker import effective, stages
    from tests.deploy.test_deploy_docker_images import env_of

    image = stages((ROOT / "Dockerfile").read_text())
    volumes = [Path(v) for args in effective(image, "gpu", "VOLUME") for v in yaml.safe_load(args)]
    env = yaml.safe_load(path.read_text())["environment_variables"]
    names = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE",
             "CUDA_CACHE_PATH")
    for name in names:
        assert any(v in Path(env[name]).parents for v in volumes), f"{name}={env.get(name)}"
        assert env[name] == env_of(image, "gpu")[name], "the same place as the image's own default"

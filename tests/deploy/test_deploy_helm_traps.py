"""Chart traps that only show in a cluster: settings the server could not parse, a rollout marked failed while the
weights download, KEDA scaling in at its own pace, and pod hardening (service-account token, bounded node-disk
cache, RDMA for multi-node NCCL, compile caches on the model-cache volume)."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr

from server.settings import Settings
from tests.deploy.test_deploy_helm import CHART, VALUES_FILES, by_kind, pod_templates, render, rendered_settings, values_of

# Settings the chart does not take under `settings`, each for a reason of its own: the keys come from the Secret,
# host and port from containerPort (probes and the Service follow it), config is a file inside the image, the Redis
# URL from redis.* (by a Secret when it holds a password).
NOT_CHART_SETTINGS = {"api_keys", "api_key_file", "admin_api_keys", "host", "port", "config", "redis_url",
                      "redis_url_file"}
# Settings whose validators accept only some values of their type.
DOMAIN_VALUES = {
    "trusted_proxies": ["10.244.0.0/16", "fd00::/8"],
    "guard_block_categories": ["S1", "S10"],
    "guard_key_categories": {"k-3f2a9c1d": ["S1", "S2"], "k-77aa0b1e": ["S14"]},
    "max_lora_rank": 32,
    "engine_args": {"block_size": 32, "max_parallel_loading_workers": 2},
    "speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
    "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4], "mode": 3},
}
COMPILE_CACHE_ENV = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE",
                     "CUDA_CACHE_PATH")


def non_default(name: str, annotation: Any, default: Any, bounds: dict[str, float]) -> Any:
    """A value of the field's type that is not its default, within its bounds."""
    if name in DOMAIN_VALUES:
        return DOMAIN_VALUES[name]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return non_default(name, args[0], default, bounds)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return next(choice for choice in args if choice != default)
    if origin is list:
        return [f"{name}-a", f"{name}-b"]
    if origin is dict:
        value_type = args[1]
        return {f"{name}-{k}": ([f"{k}1", f"{k}2"] if typing.get_origin(value_type) is list else f"/data/{name}/{k}")
                for k in ("a", "b")}
    if annotation is bool:
        return not default
    if annotation is int:
        low = bounds.get("ge", bounds.get("gt", 0) + 1)
        return default + 1 if default is not None else max(7, low)
    if annotation is float:
        return default / 2 if default else 0.5
    if annotation is SecretStr:
        return f"{name}-value"
    if annotation is Path:
        return f"/data/{name}"
    if annotation is str:
        return f"{name}-value"
    raise AssertionError(f"no non-default value for {name}: {annotation}; add one to DOMAIN_VALUES")


def chart_settings() -> dict[str, Any]:
    values = {}
    for name, field in Settings.model_fields.items():
        if name in NOT_CHART_SETTINGS:
            continue
        bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
        values[name] = non_default(name, field.annotation, field.get_default(call_default_factory=True), bounds)
    return values


def test_every_setting_reaches_the_server_as_given(clean_env):
    """Lists and maps included: the environment holds them in the form the settings parser reads."""
    given = chart_settings()
    expected = Settings(**given)
    for name in given:
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        assert getattr(expected, name) != default, f"{name}: the test value is the default"
    for role, spec in pod_templates(render({"settings": given})):
        loaded = rendered_settings(spec, clean_env)
        for name in given:
            assert getattr(loaded, name) == getattr(expected, name), f"{role}: {name}"


def test_settings_the_chart_takes_elsewhere_are_refused():
    import helm_python

    for name in NOT_CHART_SETTINGS - {"config"}:
        with pytest.raises(helm_python.HelmError):
            render({"settings": {name: "x"}})


@pytest.mark.parametrize("failure_threshold", [None, 1080], ids=["default-60min", "405b-3h"])
def test_rollout_deadline_covers_the_startup_budget(failure_threshold):
    values = {"probes": {"startup": {"failureThreshold": failure_threshold}}} if failure_threshold else {}
    (deployment,) = by_kind(render(values), "Deployment")
    startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (failure_threshold or 360) * 10
    assert deployment["spec"]["progressDeadlineSeconds"] > budget, "a first install would be marked failed"


def test_keda_scales_in_as_slowly_as_the_hpa():
    keda = values_of(CHART / "ci" / "autoscaling-keda-values.yaml")
    hpa = values_of(CHART / "ci" / "autoscaling-values.yaml")
    (scaled,) = by_kind(render(keda), "ScaledObject")
    (own_hpa,) = by_kind(render(hpa), "HorizontalPodAutoscaler")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"] == own_hpa["spec"]["behavior"]["scaleDown"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_pods_mount_no_service_account_token(values_file):
    for role, spec in pod_templates(render(values_of(values_file))):
        assert spec["automountServiceAccountToken"] is False, role


def test_a_node_disk_model_cache_is_bounded_and_requested():
    docs = render({"modelCache": {"enabled": False, "size": "200Gi"}})
    assert not by_kind(docs, "PersistentVolumeClaim")
    for role, spec in pod_templates(docs):
        cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")["emptyDir"]
        assert cache["sizeLimit"] == "200Gi", role
        assert spec["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "200Gi", role


def test_multinode_example_gets_rdma_and_the_default_does_not():
    docs = render(values_of(CHART / "ci" / "multinode-405b-values.yaml"))
    for role, spec in pod_templates(docs):
        container = spec["containers"][0]
        assert int(container["resources"]["limits"]["rdma/ib"]) >= 1, role
        assert int(container["resources"]["requests"]["rdma/ib"]) >= 1, role
        assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"], role
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for role, spec in pod_templates(render({})):
        container = spec["containers"][0]
        assert not any(r.startswith("rdma/") for r in container["resources"]["limits"]), role
        assert "add" not in container["securityContext"]["capabilities"], role


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_compile_caches_live_on_the_model_cache_volume(values_file):
    for role, spec in pod_templates(render(values_of(values_file))):
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = Path(next(m for m in container["volumeMounts"] if m["name"] == "model-cache")["mountPath"])
        for name in COMPILE_CACHE_ENV:
            assert mount in Path(env[name]).parents, f"{role}: {name}={env[name]} is not under {mount}"
        assert len({env[name] for name in COMPILE_CACHE_ENV}) == len(COMPILE_CACHE_ENV)

"""Helm chart: renders and lints for every example values file, validates against Kubernetes 1.30 schemas
offline, and the rendered pods serve the preset they name, on the routes and port the server uses."""

from __future__ import annotations

from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

from server.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llamaserve"
PRESETS = ROOT / "configs" / "presets"
HARDWARE = yaml.safe_load((PRESETS / "hardware.yaml").read_text())
K8S_VERSION = "1.30.0"
PORT = Settings.model_fields["port"].default
GPU = "nvidia.com/gpu"
# Custom resources kubernetes-validate has no schema for; their key fields are checked by hand below, the Inference
# Gateway's against the CRDs' schemas (tests/deploy/test_deploy_helm_fleet.py).
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}
VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))


def render(values: dict) -> list[dict]:
    manifests = helm_python.Chart.load(CHART).render(values, name="rel", namespace="llm")
    docs = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(role, pod spec) for every llamaserve pod the release runs (not the optional Redis pod)."""
    out = [("server", d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")
           if d["spec"]["template"]["metadata"]["labels"].get("llamaserve.io/role") == "server"]
    for lws in by_kind(docs, "LeaderWorkerSet"):
        tmpl = lws["spec"]["leaderWorkerTemplate"]
        out += [("server", tmpl["leaderTemplate"]["spec"]), ("worker", tmpl["workerTemplate"]["spec"])]
    assert out, "no pods rendered"
    return out


def values_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module", params=VALUES_FILES, ids=lambda p: p.name)
def case(request):
    values = values_of(request.param)
    return request.param, values, render(values)


def test_example_values_files_cover_the_deployments_we_document():
    names = {p.name for p in VALUES_FILES}
    assert {
        "single-gpu-values.yaml",
        "tp4-70b-values.yaml",
        "autoscaling-values.yaml",
        "autoscaling-keda-values.yaml",
        "multinode-405b-values.yaml",
        "fleet-values.yaml",
    } <= names


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_has_no_errors_or_warnings(values_file):
    report = helm_python.lint(CHART, values_of(values_file) if values_file else None)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_manifests_validate_against_kubernetes_schemas(case):
    _, _, docs = case
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The LeaderWorkerSet's pod templates are plain pod specs: validate them as Pods.
    for lws in by_kind(docs, "LeaderWorkerSet"):
        tmpl = lws["spec"]["leaderWorkerTemplate"]
        for part in ("leaderTemplate", "workerTemplate"):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **tmpl[part]["metadata"]},
                   "spec": tmpl[part]["spec"]}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_validation_catches_a_broken_manifest():
    # Guard for the check above: a misspelt field must not pass.
    deployment = by_kind(render({}), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# The API keys' file lies on the mounted Secret, which a test does not have: checked by key_file_mount() instead.
KEY_FILE_ENV = f"{ENV_PREFIX}API_KEY_FILE"


def rendered_settings(spec: dict, monkeypatch) -> Settings:
    """The settings the server would load from this container's environment (less the key file's path)."""
    container = spec["containers"][0]
    for env in container["env"]:
        if env["name"].startswith(ENV_PREFIX) and "value" in env and env["name"] != KEY_FILE_ENV:
            monkeypatch.setenv(env["name"], env["value"])
    return load_settings()


def key_file_mount(spec: dict) -> tuple[str, dict]:
    """(the key within the Secret, the secret volume) the server container's API key file is read from."""
    container = spec["containers"][0]
    path = Path({e["name"]: e.get("value") for e in container["env"]}[KEY_FILE_ENV])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    assert "subPath" not in mount, "a subPath mount is never updated: a rotation would need a restart"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    (item,) = [i for i in volume["items"] if i["path"] == path.name]
    return item["key"], volume


def test_env_matches_the_preset_it_names(case, clean_env):
    path, values, docs = case
    name = values["presetName"]
    preset_file = PRESETS / f"{name}.yaml"
    assert yaml.safe_load(values["preset"]) == yaml.safe_load(preset_file.read_text()), "preset text drifted"
    expected = load_settings(config=preset_file).model_dump(exclude={"config"})
    hw = HARDWARE[name]
    if values.get("multiNode", {}).get("enabled"):
        expected.update(pipeline_parallel_size=hw["multi_node"]["pipeline_parallel_size"],
                        distributed_executor_backend="ray")
        selector = hw["multi_node"]["k8s_node_selector"]
    else:
        selector = hw["k8s_node_selector"]
    # What the fleet example sets beside the preset: runtime adapters, the Redis URL's file, adapter series for
    # the endpoint picker.
    if values.get("lora", {}).get("allowRuntime"):
        expected.update(allow_runtime_lora=True, max_loras=values["lora"]["maxLoras"])
    if values.get("redis", {}).get("existingSecret"):
        expected.update(redis_url_file=Path("/etc/llamaserve/redis/url"))
    if values.get("inferencePool", {}).get("enabled"):
        expected.update(metrics_show_adapters=True)
    for role, spec in pod_templates(docs):
        got = rendered_settings(spec, clean_env).model_dump(exclude={"config"})
        if role == "worker":
            got.update(redis_url_file=expected["redis_url_file"])  # a Ray worker serves no HTTP, needs no Redis
        assert got == expected, role
        assert spec["nodeSelector"] == selector


def test_gpu_request_is_tensor_x_pipeline_parallel(case, clean_env):
    _, values, docs = case
    pods = pod_templates(docs)
    settings = rendered_settings(pods[0][1], clean_env)
    total = settings.tensor_parallel_size * settings.pipeline_parallel_size
    size = values.get("multiNode", {}).get("size", 1) if values.get("multiNode", {}).get("enabled") else 1
    for _, spec in pods:
        resources = spec["containers"][0]["resources"]
        assert int(resources["requests"][GPU]) == int(resources["limits"][GPU]) == total // size
    assert sum(int(s["containers"][0]["resources"]["limits"][GPU]) for _, s in pods[:1]) * size == total


def test_probes_hit_the_contract_routes_on_the_server_port(case):
    _, _, docs = case
    for role, spec in pod_templates(docs):
        container = spec["containers"][0]
        if role == "worker":
            assert not any(k.endswith("Probe") for k in container), "Ray workers serve no HTTP"
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == PORT
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LLAMASERVE_PORT"] == str(PORT)
        probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["startupProbe"]["path"] == "/ready", "/health answers while the model loads"
        assert probes["livenessProbe"]["path"] == "/health"
        assert probes["readinessProbe"]["path"] == "/ready"
        assert all(ports.get(p["port"], p["port"]) == PORT for p in probes.values())
    service = by_kind(docs, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_shm_is_memory_backed_and_mounted(case):
    _, values, docs = case
    for _, spec in pod_templates(docs):
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm["medium"] == "Memory"
        assert shm["sizeLimit"] == values.get("shm", {}).get("sizeLimit", "16Gi")
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["dshm"] == "/dev/shm"


def test_model_cache_claim_fits_the_pod_count(case):
    _, values, docs = case
    pvc = by_kind(docs, "PersistentVolumeClaim")[0]
    many_pods = values.get("autoscaling", {}).get("enabled") or values.get("multiNode", {}).get("enabled")
    if many_pods:
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes share the cache"
    for _, spec in pod_templates(docs):
        claim = next(v for v in spec["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]
        assert claim["claimName"] == pvc["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert env["HF_HOME"] == mounts["model-cache"]


def test_secrets_reach_pods_only_by_secret_key_ref():
    values = {"secret": {"create": True, "apiKeys": ["k-primary-0123456789", "k-second-0123456789"],
                         "hfToken": "hf_0123456789secret"}}
    docs = render(values)
    secret = by_kind(docs, "Secret")[0]
    assert secret["stringData"]["api-keys"] == "k-primary-0123456789\nk-second-0123456789"  # the key file's lines
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim"):
        text = yaml.safe_dump(by_kind(docs, kind))
        assert "0123456789" not in text, f"a secret value leaked into the {kind}"
    spec = pod_templates(docs)[0][1]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert "LLAMASERVE_API_KEYS" not in env, "keys in env change only with a restart"
    key, volume = key_file_mount(spec)
    assert volume["secretName"] == secret["metadata"]["name"] and key in secret["stringData"]
    assert volume.get("optional") in (None, False), "a missing Secret must stop the pod, not open the server"
    from server.settings import key_file_lines

    assert key_file_lines(secret["stringData"][key].encode()) == values["secret"]["apiKeys"]


def test_no_plain_value_for_secret_like_env(case):
    _, _, docs = case
    for _, spec in pod_templates(docs):
        for env in spec["containers"][0]["env"]:
            # API keys, HF_TOKEN and the like; a count such as MAX_NUM_BATCHED_TOKENS is no secret.
            if env["name"] == KEY_FILE_ENV:
                key_file_mount(spec)  # a path on the mounted Secret, not a key
            elif env["name"].endswith(("KEY", "KEYS", "TOKEN", "SECRET", "PASSWORD")):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]


def test_api_keys_in_settings_are_refused():
    with pytest.raises(helm_python.HelmError, match="Secret"):
        render({"settings": {"api_keys": "plain-text-key"}})


def test_autoscaling_targets_the_workload_on_the_vllm_queue(case):
    _, values, docs = case
    autoscaling = values.get("autoscaling", {})
    hpas, scaled = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "ScaledObject")
    if not autoscaling.get("enabled"):
        assert not hpas and not scaled
        return
    workload = (by_kind(docs, "Deployment") or by_kind(docs, "LeaderWorkerSet"))[0]
    assert "replicas" not in workload["spec"], "the autoscaler owns the replica count"
    if autoscaling["kind"] == "hpa":
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    else:
        (obj,) = scaled
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == workload["metadata"]["name"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        assert "vllm:num_requests_waiting" in trigger["metadata"]["query"]
        assert trigger["metadata"]["serverAddress"].startswith("http")
        assert float(trigger["metadata"]["threshold"]) > 0


def test_service_monitor_scrapes_metrics_from_the_service(case):
    _, values, docs = case
    monitors = by_kind(docs, "ServiceMonitor")
    if not values.get("serviceMonitor", {}).get("enabled"):
        assert not monitors
        return
    (monitor,) = monitors
    service = by_kind(docs, "Service")[0]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_pdb_and_service_select_the_serving_pods(case):
    _, _, docs = case
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    service = by_kind(docs, "Service")[0]
    assert "maxUnavailable" in pdb["spec"]
    serving_labels = []
    for d in by_kind(docs, "Deployment"):
        serving_labels.append(d["spec"]["template"]["metadata"]["labels"])
    for d in by_kind(docs, "LeaderWorkerSet"):
        serving_labels.append(d["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"])
        worker = d["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= worker.items(), "Ray workers serve no HTTP"
    for labels in serving_labels:
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items()


def test_multinode_runs_ray_head_on_leader_and_workers_join_it():
    values = values_of(CHART / "ci" / "multinode-405b-values.yaml")
    docs = render(values)
    assert not by_kind(docs, "Deployment")
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == values["multiNode"]["size"] == HARDWARE["llama-3.1-405b-instruct-fp8"]["multi_node"]["nodes"]
    leader = " ".join(tmpl["leaderTemplate"]["spec"]["containers"][0]["args"])
    worker = " ".join(tmpl["workerTemplate"]["spec"]["containers"][0]["args"])
    assert "ray start --head" in leader and "exec python /opt/llamaserve/preflight.py llamaserve serve" in leader
    assert leader.index("ray start --head") < leader.index("llamaserve serve")
    assert "LWS_LEADER_ADDRESS" in worker and "llamaserve serve" not in worker


def test_multinode_is_off_by_default_and_refuses_a_non_ray_backend():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["multiNode"]["enabled"] is False
    with pytest.raises(helm_python.HelmError, match="ray"):
        render({"multiNode": {"enabled": True}, "settings": {"tensor_parallel_size": 2,
                                                             "distributed_executor_backend": "mp"}})


def test_set_file_preset_drives_settings_and_gpus(clean_env):
    # The documented path for any preset: --set-file preset=configs/presets/NAME.yaml
    preset_file = PRESETS / "llama-3.1-70b-instruct.yaml"
    docs = render({"preset": preset_file.read_text(), "settings": {"max_model_len": 8192}})
    spec = pod_templates(docs)[0][1]
    expected = load_settings(config=preset_file).model_dump(exclude={"config"}) | {"max_model_len": 8192}
    assert rendered_settings(spec, clean_env).model_dump(exclude={"config"}) == expected
    assert spec["containers"][0]["resources"]["limits"][GPU] == 4


def test_default_preset_is_the_1b_preset():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert yaml.safe_load(defaults["preset"]) == yaml.safe_load(
        (PRESETS / f"{defaults['presetName']}.yaml").read_text()
    )


def test_an_empty_api_key_in_the_chart_secret_is_refused():
    for blank in ("", "  "):
        with pytest.raises(helm_python.HelmError, match="empty key"):
            render({"secret": {"create": True, "apiKeys": ["k-primary-0123456789", blank]}})


def test_auth_disabled_says_so_to_the_server_and_auth_enabled_never_does():
    def env_of(values: dict) -> dict:
        return {e["name"]: e for e in pod_templates(render(values))[0][1]["containers"][0]["env"]}

    open_env = env_of({"auth": {"enabled": False}})
    assert open_env["LLAMASERVE_ALLOW_UNAUTHENTICATED"]["value"] == "true" and KEY_FILE_ENV not in open_env
    assert "LLAMASERVE_ALLOW_UNAUTHENTICATED" not in env_of({})

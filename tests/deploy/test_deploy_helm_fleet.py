"""The chart's fleet: the replicas' shared Redis (a URL, a Secret mounted as a file, or a single Redis pod in the
release) and the Inference Gateway's InferencePool and HTTPRoute, validated against the extension's and Gateway
API's schemas (tests/deploy/crd_schemas/)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.test_deploy_helm import (CHART, K8S_VERSION, VALUES_FILES, by_kind, pod_templates, render,
                                           rendered_settings, values_of)

SCHEMAS = Path(__file__).parent / "crd_schemas"
POOL = {"enabled": True, "endpointPicker": {"service": "llm-d-epp"}}


def crd_validator(name: str) -> jsonschema.Draft7Validator:
    """The vendored openAPIV3Schema, refusing unknown fields: the API server would drop or refuse a misspelt one,
    so a field the chart means to set must be one the CRD knows."""
    schema = copy.deepcopy(yaml.safe_load((SCHEMAS / name).read_text())["openAPIV3Schema"])

    def closed(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                closed(value)
        elif isinstance(node, list):
            for value in node:
                closed(value)

    closed(schema)
    return jsonschema.Draft7Validator(schema)


POOL_SCHEMA = crd_validator("inferencepool-v1.yaml")
ROUTE_SCHEMA = crd_validator("httproute-v1.yaml")


def the(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def server_env(docs: list[dict]) -> dict[str, dict]:
    spec = dict(pod_templates(docs))["server"]
    return {e["name"]: e for e in spec["containers"][0]["env"]}


# --- the Inference Gateway


def test_no_pool_or_route_unless_asked():
    docs = render({})
    assert not by_kind(docs, "InferencePool") and not by_kind(docs, "HTTPRoute")


@pytest.mark.parametrize("multinode", [False, True], ids=["deployment", "multinode"])
def test_pool_and_route_validate_against_the_crds_and_select_the_serving_pods(multinode, clean_env):
    values = {"inferencePool": {**POOL, "httpRoute": {"gatewayNamespace": "gateways", "hostnames": ["llm.example.com"]}},
              "containerPort": 8080}
    if multinode:
        values |= {"multiNode": {"enabled": True}, "modelCache": {"accessModes": ["ReadWriteMany"]},
                   "settings": {"tensor_parallel_size": 8, "pipeline_parallel_size": 2}}
    docs = render(values)
    pool, route = the(docs, "InferencePool"), the(docs, "HTTPRoute")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    POOL_SCHEMA.validate(pool)
    ROUTE_SCHEMA.validate(route)
    # The CRD's rule that a Service reference names its port (a CEL rule, not in the openAPIV3Schema).
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["kind"] == "Service" and ref["name"] == "llm-d-epp" and ref["port"]["number"] == 9002
    # The pool holds the pods that answer HTTP on the port they listen on, and no Ray worker.
    selector = pool["spec"]["selector"]["matchLabels"]
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    roles = {}
    for workload in by_kind(docs, "Deployment") + by_kind(docs, "LeaderWorkerSet"):
        if workload["kind"] == "Deployment":
            roles["server"] = workload["spec"]["template"]["metadata"]["labels"]
        else:
            tmpl = workload["spec"]["leaderWorkerTemplate"]
            roles["server"] = tmpl["leaderTemplate"]["metadata"]["labels"]
            roles["worker"] = tmpl["workerTemplate"]["metadata"]["labels"]
    assert selector.items() <= roles["server"].items()
    if multinode:
        assert not selector.items() <= roles["worker"].items()
    server = dict(pod_templates(docs))["server"]["containers"][0]
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in server["ports"]
    # The route sends the API to the pool, through the named Gateway, and nothing else.
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "inference-gateway", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    [rule] = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                    "name": pool["metadata"]["name"]}]
    paths = {(m["path"]["type"], m["path"]["value"]) for m in rule["matches"]}
    assert paths == {("PathPrefix", "/v1"), ("Exact", "/chat/completions"), ("Exact", "/completions")}
    # The picker reads vllm:lora_requests_info from every pod's /metrics, without a key.
    assert rendered_settings(dict(pod_templates(docs))["server"], clean_env).metrics_show_adapters


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_every_example_pool_and_route_validate_against_the_crds(values_file):
    docs = render(values_of(values_file))
    for pool in by_kind(docs, "InferencePool"):
        POOL_SCHEMA.validate(pool)
    for route in by_kind(docs, "HTTPRoute"):
        ROUTE_SCHEMA.validate(route)


def test_the_fleet_example_shares_state_and_routes_through_the_gateway():
    docs = render(values_of(CHART / "ci" / "fleet-values.yaml"))
    assert the(docs, "InferencePool") and the(docs, "HTTPRoute")
    assert "LLAMASERVE_REDIS_URL_FILE" in server_env(docs)
    assert the(docs, "Deployment")["spec"]["replicas"] > 1


def test_the_crd_check_catches_a_broken_pool_or_route():
    # Guard for the checks above: each of these would be refused or dropped by the API server.
    docs = render({"inferencePool": POOL})
    pool, route = the(docs, "InferencePool"), the(docs, "HTTPRoute")
    broken_pools = [("spec", "extensionRef", {"name": "x"}), ("spec", "targetPorts", []),
                    ("spec", "targetPorts", [{"number": "8000"}]), ("spec", "selector", {"matchLabels": {}})]
    for *path, key, value in broken_pools:
        doc = copy.deepcopy(pool)
        node = doc
        for part in path:
            node = node[part]
        node[key] = value
        with pytest.raises(jsonschema.ValidationError):
            POOL_SCHEMA.validate(doc)
    doc = copy.deepcopy(pool)
    doc["spec"]["endpointPickerRef"]["failureMode"] = "Open"
    with pytest.raises(jsonschema.ValidationError):
        POOL_SCHEMA.validate(doc)
    doc = copy.deepcopy(route)
    doc["spec"]["rules"][0]["timeouts"]["request"] = "1 hour"
    with pytest.raises(jsonschema.ValidationError):
        ROUTE_SCHEMA.validate(doc)
    doc = copy.deepcopy(route)
    doc["spec"]["rules"][0]["backendRef"] = doc["spec"]["rules"][0].pop("backendRefs")
    with pytest.raises(jsonschema.ValidationError):
        ROUTE_SCHEMA.validate(doc)


def test_pool_settings_are_checked_when_rendered():
    with pytest.raises(helm_python.HelmError, match="endpointPicker.service"):
        render({"inferencePool": {"enabled": True}})
    docs = render({"inferencePool": {**POOL, "httpRoute": {"enabled": False}}})
    assert by_kind(docs, "InferencePool") and not by_kind(docs, "HTTPRoute")
    # An operator's own choice for the adapter series stands.
    docs = render({"inferencePool": POOL, "settings": {"metrics_show_adapters": False}})
    assert server_env(docs)["LLAMASERVE_METRICS_SHOW_ADAPTERS"]["value"] == "false"


# --- Redis


def test_no_redis_unless_asked():
    docs = render({})
    assert not [n for n in server_env(docs) if "REDIS" in n]
    assert not [d for d in docs if "redis" in d["metadata"]["name"]]


def test_a_plain_redis_url_reaches_the_server(clean_env):
    docs = render({"redis": {"url": "redis://redis.cache.svc:6379/2"}, "settings": {"redis_timeout_s": 0.5}})
    loaded = rendered_settings(dict(pod_templates(docs))["server"], clean_env)
    assert loaded.shared_state_url() == "redis://redis.cache.svc:6379/2" and loaded.redis_timeout_s == 0.5


def test_a_redis_secret_is_a_file_the_server_reads(tmp_path, clean_env):
    docs = render({"redis": {"existingSecret": "fleet-redis", "existingSecretKey": "url"}})
    spec = dict(pod_templates(docs))["server"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert "LLAMASERVE_REDIS_URL" not in env
    path = Path(env["LLAMASERVE_REDIS_URL_FILE"]["value"])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    assert mount["readOnly"] and "subPath" not in mount  # a subPath mount is never updated
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "fleet-redis"
    assert volume["secret"]["items"] == [{"key": "url", "path": path.name}]
    # The server reads that file; what the kubelet writes there (here, in tmp_path) is what it connects to.
    loaded = rendered_settings(spec, clean_env)
    assert loaded.redis_url_file == path
    (tmp_path / path.name).write_text("rediss://fleet:s3cret@redis.example:6380/0\n")
    mounted = loaded.model_copy(update={"redis_url_file": tmp_path / path.name})
    assert mounted.shared_state_url() == "rediss://fleet:s3cret@redis.example:6380/0"


def test_multinode_workers_get_no_redis():
    docs = render({"redis": {"existingSecret": "fleet-redis"}, "multiNode": {"enabled": True},
                   "modelCache": {"accessModes": ["ReadWriteMany"]},
                   "settings": {"tensor_parallel_size": 8, "pipeline_parallel_size": 2}})
    worker = dict(pod_templates(docs))["worker"]
    assert not [e for e in worker["containers"][0]["env"] if "REDIS" in e["name"]]
    assert not [v for v in worker["volumes"] if v["name"] == "redis-url"]


def test_the_release_redis_is_reachable_by_its_serving_pods_only(clean_env):
    docs = render({"redis": {"deploy": {"enabled": True}}})
    for doc in docs:
        if "redis" in doc["metadata"]["name"]:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    redis = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-redis")][0]
    [service] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-redis")]
    [policy] = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-redis")]
    pod = redis["spec"]["template"]
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # The server connects to that Service's port...
    loaded = rendered_settings(dict(pod_templates(docs))["server"], clean_env)
    assert loaded.shared_state_url() == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    # ...and only the serving pods may: not the Redis pod's other neighbours, not the Service selecting it.
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    serving = [d for d in by_kind(docs, "Deployment") if not d["metadata"]["name"].endswith("-redis")][0]
    assert source["podSelector"]["matchLabels"].items() <= serving["spec"]["template"]["metadata"]["labels"].items()
    assert not source["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # Without a password, protected mode would refuse the serving pods; nothing is written to disk.
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--protected-mode") + 1] == "no"
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values, reason", [
    ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "holds a password"),
    ({"redis": {"url": "rediss://fleet:hunter2@redis:6380/0"}}, "holds a password"),
    ({"redis": {"url": "redis://redis:6379/0?password=hunter2"}}, "holds a password"),
    ({"redis": {"url": "redis://redis:6379/0", "existingSecret": "fleet-redis"}}, "set one of"),
    ({"redis": {"existingSecret": "fleet-redis", "deploy": {"enabled": True}}}, "set one of"),
    ({"settings": {"redis_url": "redis://redis:6379/0"}}, "redis_url"),
    ({"settings": {"redis_url_file": "/etc/redis/url"}}, "redis_url_file"),
], ids=["password", "user-password", "query-password", "url-and-secret", "secret-and-deploy", "settings-url", "settings-url-file"])
def test_redis_values_that_would_leak_or_conflict_are_refused(values, reason):
    with pytest.raises(helm_python.HelmError, match=reason):
        render(values)


def test_the_guide_selects_the_serving_pods_for_the_picker_charts_pool():
    """docs/DEPLOY.md's install of the picker chart's own pool: its matchLabels select this chart's serving pods."""
    guide = (CHART.parents[1] / "docs" / "DEPLOY.md").read_text()
    section = guide[guide.index("## Routing with the Inference Gateway"):guide.index("### Session affinity")]
    labels = {key.replace("\\.", "."): value for key, value in
              re.findall(r'matchLabels\."([^"]+)"=(\S+)', section)}
    release = labels["app.kubernetes.io/instance"]
    assert f"helm install {release} helm/llamaserve" in guide, "the pool selects the guide's own release"
    manifests = helm_python.Chart.load(CHART).render({}, name=release, namespace="llm")
    docs = [d for path, text in manifests.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    pods = the(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels.items() <= pods.items()

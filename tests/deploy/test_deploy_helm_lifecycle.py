"""Helm chart: layouts that would install but never start or never stay up are refused or fixed — multi-node
names, the model cache's access mode, tensor parallel across nodes, Ray's ports, keys on workers, service links,
the drain on rollouts and the disruption budget."""

from __future__ import annotations

import helm_python
import pytest

from server.settings import load_settings
from tests.deploy.test_deploy_helm import CHART, by_kind, pod_templates, render, values_of

MULTINODE = values_of(CHART / "ci" / "multinode-405b-values.yaml")
SINGLE = values_of(CHART / "ci" / "single-gpu-values.yaml")
RWX = {"accessModes": ["ReadWriteMany"]}


def containers_by_role(docs: list[dict]) -> dict[str, dict]:
    return {role: spec["containers"][0] for role, spec in pod_templates(docs)}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_service_and_leaderworkerset_names_differ():
    # LeaderWorkerSet creates the headless Service its workers resolve the leader by only if no Service of
    # its own name exists; the chart's Service with that name left the leader unreachable.
    docs = render({**MULTINODE, "autoscaling": {"enabled": True, "kind": "hpa"}})
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    assert lws["metadata"]["name"] not in services
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": lws["metadata"]["name"],
    }
    # KEDA's query still names the chart's Service, which Prometheus' service label carries.
    keda = render({**MULTINODE, "autoscaling": {"enabled": True, "kind": "keda"}})
    (obj,) = by_kind(keda, "ScaledObject")
    assert obj["spec"]["scaleTargetRef"]["name"] == lws["metadata"]["name"]
    assert f'service="{by_kind(keda, "Service")[0]["metadata"]["name"]}"' in obj["spec"]["triggers"][0]["metadata"]["query"]


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"autoscaling": {"enabled": True, "maxReplicas": 4}},
        {**MULTINODE, "modelCache": {"accessModes": ["ReadWriteOnce"]}},
    ],
    ids=["replicas", "autoscaling", "multinode"],
)
def test_read_write_once_cache_is_refused_for_many_pods(values):
    with pytest.raises(helm_python.HelmError, match="ReadWriteMany"):
        render(values)


def test_read_write_once_cache_is_fine_for_one_pod_and_many_is_fine_for_many():
    assert by_kind(render({"replicaCount": 1}), "PersistentVolumeClaim")[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert len(by_kind(render({"replicaCount": 3, "modelCache": RWX}), "Deployment")) == 1
    # An existing claim's access mode is not the chart's to know: it is not second-guessed.
    assert not by_kind(render({"replicaCount": 3, "modelCache": {"existingClaim": "weights"}}), "PersistentVolumeClaim")


def test_tensor_parallel_across_nodes_is_refused():
    # 16-way tensor parallel over two 8-GPU pods would run every layer's all-reduce over the network.
    values = {**MULTINODE, "settings": {"tensor_parallel_size": 16, "pipeline_parallel_size": 1}}
    with pytest.raises(helm_python.HelmError, match="tensor_parallel_size 16"):
        render(values)
    # The documented layout: tensor parallel inside a node, one pipeline stage per node.
    assert by_kind(render(MULTINODE), "LeaderWorkerSet")


def test_ray_is_reachable_only_from_the_release():
    docs = render(MULTINODE)
    roles = containers_by_role(docs)
    leader_args = " ".join(roles["server"]["args"])
    assert "--include-dashboard=false" in leader_args, "Ray's dashboard accepts jobs from anyone who reaches it"
    tmpl = by_kind(docs, "LeaderWorkerSet")[0]["spec"]["leaderWorkerTemplate"]
    labels = {"server": tmpl["leaderTemplate"]["metadata"]["labels"], "worker": tmpl["workerTemplate"]["metadata"]["labels"]}
    policies = by_kind(docs, "NetworkPolicy")
    assert policies, "without a NetworkPolicy every pod in the cluster reaches the Ray head's ports"

    def admitted(role: str, port: str | int, from_labels: dict) -> bool:
        """Whether some policy selecting the pod admits a connection on `port` from a pod with `from_labels`."""
        selecting = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels[role].items()]
        assert selecting, f"no policy isolates the {role} pods"
        for policy in selecting:
            for rule in policy["spec"].get("ingress", []):
                ports = [p["port"] for p in rule.get("ports", [])]
                peers = rule.get("from")
                port_ok = not ports or port in ports
                peer_ok = peers is None or any(
                    peer.get("podSelector", {}).get("matchLabels", {}).items() <= from_labels.items()
                    and "namespaceSelector" not in peer and "ipBlock" not in peer
                    for peer in peers
                )
                if port_ok and peer_ok:
                    return True
        return False

    stranger = {"app": "something-else"}
    for role in ("server", "worker"):
        assert not admitted(role, 6379, stranger), role
        assert not admitted(role, 10001, stranger), role  # Ray client server
        assert admitted(role, 6379, labels["worker"]) and admitted(role, 6379, labels["server"]), role
    assert admitted("server", "http", stranger), "clients, probes and Prometheus reach the HTTP port"
    assert not admitted("worker", 8265, stranger)


def test_workers_get_no_api_keys():
    docs = render({**MULTINODE, "auth": {"enabled": True}})
    roles = containers_by_role(docs)
    assert "LLAMASERVE_API_KEY_FILE" in env_of(roles["server"])
    worker_env = env_of(roles["worker"])
    assert "LLAMASERVE_API_KEY_FILE" not in worker_env and "LLAMASERVE_API_KEYS" not in worker_env
    refs = [e["valueFrom"]["secretKeyRef"]["key"] for e in worker_env.values() if "valueFrom" in e]
    assert "api-keys" not in refs
    worker_spec = next(spec for role, spec in pod_templates(docs) if role == "worker")
    assert not [v for v in worker_spec["volumes"] if "secret" in v], "the key file is the server's alone"
    assert "HF_TOKEN" in worker_env, "workers load their own shards of the weights"


@pytest.mark.parametrize("values", [{}, SINGLE, MULTINODE], ids=["defaults", "single-gpu", "multinode"])
def test_service_links_are_off(values):
    # A Service named llamaserve would inject LLAMASERVE_PORT=tcp://10.0.0.1:8000 into every pod of the namespace.
    for role, spec in pod_templates(render(values)):
        assert spec["enableServiceLinks"] is False, role


@pytest.mark.parametrize("values", [SINGLE, MULTINODE], ids=["single-gpu", "multinode"])
def test_pods_leave_the_service_before_they_drain(values, clean_env):
    docs = render(values)
    for role, spec in pod_templates(docs):
        container = spec["containers"][0]
        if role == "worker":
            continue
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        sleep_s = int(command[1])
        assert sleep_s >= 5, "endpoint removal takes a few seconds to reach kube-proxy and ingresses"
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        for name, value in env.items():
            clean_env.setenv(name, value)
        grace = load_settings().shutdown_grace_s
        assert spec["terminationGracePeriodSeconds"] > sleep_s + grace, "SIGKILL must not cut the drain short"


def test_startup_waits_for_the_model_not_just_the_process():
    docs = render(SINGLE)
    for role, spec in pod_templates(docs):
        container = spec["containers"][0]
        startup = container["startupProbe"]
        assert startup["httpGet"]["path"] == "/ready"
        budget_s = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget_s >= 20 * 60, "the 8B preset loads in up to 20 minutes (hardware.yaml)"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_disruption_budget_covers_the_workers_too():
    docs = render(MULTINODE)
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"]
    tmpl = by_kind(docs, "LeaderWorkerSet")[0]["spec"]["leaderWorkerTemplate"]
    for part in ("leaderTemplate", "workerTemplate"):
        assert selector.items() <= tmpl[part]["metadata"]["labels"].items(), part
    # ...and only the release's pods.
    assert selector["app.kubernetes.io/instance"] == "rel"


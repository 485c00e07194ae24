"""The chart's Grafana dashboard and Prometheus alerts: shipped the way the Grafana sidecar and the Prometheus
Operator pick them up, covering what an operator watches, and using only metrics the server really serves."""

from __future__ import annotations

import json
import re

import helm_python
import pytest
import yaml

from tests.deploy.test_deploy_helm import CHART, by_kind, render

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}
# Series Prometheus makes itself for every target: never in /metrics.
PROMETHEUS_SERIES = {"up"}
GUARD_PREFIX = "llamaserve_guard_"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors, durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        name = m.group(0)
        following = expr[m.end():].lstrip()[:1]
        if following == "(" or name.lower() in PROMQL_KEYWORDS:
            continue  # a function or an aggregation
        if expr[max(0, m.start() - 1)] in "0123456789.":
            continue  # the exponent or unit of a number (1e3)
        names.add(name)
    return names


def test_metric_names_are_read_from_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le, route) (rate(a_seconds_bucket{x="y", z=~"4..|5.."}[$__rate_interval])))') == {"a_seconds_bucket"}
    assert metric_names("sum(vllm:num_requests_waiting{a=\"b\"}) + sum(b_queued) > 32") == {"vllm:num_requests_waiting", "b_queued"}
    assert metric_names("sum(rate(x_total[5m])) / sum(rate(y_total{s=\"sum(z)\"}[5m])) > 0.05") == {"x_total", "y_total"}
    assert metric_names("min(up{namespace=\"llm\"}) == 0") == {"up"}


def shipped(values: dict | None = None) -> tuple[dict, list[dict]]:
    """The dashboard JSON and the alert rules a release ships."""
    docs = render({"serviceMonitor": {"enabled": True}, "monitoring": {"prometheusRule": {"enabled": True}},
                   **(values or {})})
    (configmap,) = dashboard_configmaps(docs)
    (text,) = configmap["data"].values()
    (rule,) = by_kind(docs, "PrometheusRule")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    return json.loads(text), rules


def panel_queries(dashboard: dict) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"]}


def test_dashboard_is_a_configmap_the_grafana_sidecar_loads():
    docs = render({})
    (configmap,) = dashboard_configmaps(docs)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    ((key, text),) = configmap["data"].items()
    assert key.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard["panels"] and dashboard["title"].startswith("llamaserve")
    current = {v["name"]: v.get("current", {}).get("value") for v in dashboard["templating"]["list"]}
    assert current["namespace"] == "llm" and current["service"] == by_kind(docs, "Service")[0]["metadata"]["name"]
    # Grafana keeps one dashboard per uid: two releases must not overwrite each other's.
    other = json.loads(next(iter(dashboard_configmaps(render_release("other"))[0]["data"].values())))
    assert other["uid"] != dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert not dashboard_configmaps(render({"monitoring": {"dashboard": {"enabled": False}}}))


def dashboard_configmaps(docs: list[dict]) -> list[dict]:
    return [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def render_release(release: str) -> list[dict]:
    manifests = helm_python.Chart.load(CHART).render({}, name=release, namespace="llm")
    return [d for path, text in manifests.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def test_alert_rules_need_the_operator():
    # "auto" renders the PrometheusRule only where the API exists; offline rendering has no cluster to ask.
    assert not by_kind(render({}), "PrometheusRule")
    assert not by_kind(render({"monitoring": {"prometheusRule": {"enabled": False}}}), "PrometheusRule")
    _, rules = shipped({"monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}})
    assert rules and all(r["alert"] and r["expr"] and r["labels"]["severity"] in ("warning", "critical") for r in rules)
    (rule,) = by_kind(render({"serviceMonitor": {"enabled": True},
                              "monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}}),
                      "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "kps"
    for r in rules:  # each rule watches this release only
        for name in metric_names(r["expr"]):
            assert re.search(rf'{re.escape(name)}\{{namespace="llm", service="rel-llamaserve"', r["expr"]), r["alert"]


def test_alert_rules_come_only_with_the_service_monitor_that_labels_their_series():
    # The rules select by the namespace and service labels the ServiceMonitor's scrape gives: alone they watch nothing.
    with pytest.raises(helm_python.HelmError, match="serviceMonitor.enabled"):
        render({"monitoring": {"prometheusRule": {"enabled": True}}})
    assert not by_kind(render({"serviceMonitor": {"enabled": True}}), "PrometheusRule"), "auto without the operator"
    chart = (CHART / "templates" / "prometheusrule.yaml").read_text()
    gate = next(line for line in chart.splitlines() if '"auto"' in line and "$operator" in line)
    assert ".Values.serviceMonitor.enabled" in gate, "auto must also wait for the ServiceMonitor"


def test_dashboard_and_alerts_cover_what_an_operator_watches():
    dashboard, rules = shipped()
    used = {title: set().union(*(metric_names(q) for q in qs)) for title, qs in panel_queries(dashboard).items()}
    every = set().union(*used.values())
    for topic, metric in {
        "requests": "llamaserve_requests_total",
        "time to first token": "llamaserve_time_to_first_token_seconds_bucket",
        "inter-token latency": "llamaserve_inter_token_latency_seconds_bucket",
        "tokens per second": "llamaserve_completion_tokens_total",
        "queue depth": "vllm:num_requests_waiting",
        "KV-cache use": "vllm:kv_cache_usage_perc",
        "rejections (rate limits, overload)": "llamaserve_rejected_requests_total",
        "guard blocks": GUARD_PREFIX + "blocks_total",
    }.items():
        assert metric in every, topic
    queries = " ".join(q for qs in panel_queries(dashboard).values() for q in qs)
    assert "sum by (status)" in queries, "errors by status code"
    alerts = {r["alert"]: metric_names(r["expr"]) for r in rules}
    assert any("llamaserve_requests_total" in m for m in alerts.values()), "an error-rate alert"
    assert any("vllm:kv_cache_usage_perc" in m for m in alerts.values())
    assert any("llamaserve_rejected_requests_total" in m for m in alerts.values())


def served_names(exposition: str) -> set[str]:
    """Every series name /metrics can show, including those of labelled metrics without samples yet."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            elif kind == "summary":
                names |= {name + "_sum", name + "_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def test_guard_panels_read_the_metrics_the_guard_registers(clean_env):
    """The guard's metrics are registered only on a server with a guard: check the panels against those names."""
    from prometheus_client import CollectorRegistry, generate_latest

    from server.safety.moderation import Moderator
    from server.settings import Settings

    registry = CollectorRegistry()
    Moderator(Settings(guard="remote", guard_url="http://guard.invalid"), guard=None, registry=registry)
    served = served_names(generate_latest(registry).decode())
    dashboard, rules = shipped()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [r["expr"] for r in rules]
    used = {m for e in exprs for m in metric_names(e) if m.startswith(GUARD_PREFIX)}
    assert used, "the dashboard shows guard blocks"
    assert used <= served, sorted(used - served)

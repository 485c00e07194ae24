"""The chart's alert rules select series that exist: each selector of each rule, rendered with the chart's defaults
(and its ServiceMonitor on, which the rules come with), matches a series that the ServiceMonitor's scrape of a real
server's /metrics gives Prometheus: the server's own labels plus the target labels the Prometheus Operator adds.
Here the rules and their selectors; the scrape of the real server: tests/server/test_deploy_alert_series.py."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from tests.deploy.test_deploy_helm import by_kind, render

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) for each `name{...}` in a PromQL expression."""
    return [(m.group(1), MATCHER.findall(m.group(2))) for m in SELECTOR.finditer(expr)]


def matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        got = labels.get(label, "")
        if op == "=" and got != value or op == "!=" and got == value:
            return False
        if op == "=~" and not re.fullmatch(value, got) or op == "!~" and re.fullmatch(value, got):
            return False
    return True


def released(values: dict | None = None) -> tuple[list[dict], dict[str, str]]:
    """The chart's alert rules with its defaults and ServiceMonitor on, and the target labels its scrape adds."""
    docs = render({"serviceMonitor": {"enabled": True}, "monitoring": {"prometheusRule": {"enabled": True}},
                   **(values or {})})
    (rule,) = by_kind(docs, "PrometheusRule")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = [s for s in by_kind(docs, "Service")
                  if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    (endpoint,) = monitor["spec"]["endpoints"]
    # The Prometheus Operator's relabelling of a ServiceMonitor target (job defaults to the Service's name).
    target = {"namespace": "llm", "service": service["metadata"]["name"], "job": service["metadata"]["name"],
              "endpoint": endpoint["port"], "pod": "rel-llamaserve-0", "container": "llamaserve",
              "instance": "10.0.0.7:8000"}
    return [r for group in rule["spec"]["groups"] for r in group["rules"]], target


def test_selectors_are_read_from_promql():
    assert selectors('sum(rate(a_total{x="1", y=~"2|3"}[5m])) / absent(up{z!="4"})') == [
        ("a_total", [("x", "=", "1"), ("y", "=~", "2|3")]), ("up", [("z", "!=", "4")])]
    assert matches({"route": "/v1/completions"}, [("route", "=~", "/v1/completions|/completions")])
    assert not matches({"route": "/ready"}, [("route", "=~", "/v1/completions|/completions")])


def test_the_error_rate_alert_counts_the_generation_routes_only():
    from server.routes import generate

    generation = {r.path for r in generate.router.routes if isinstance(r, APIRoute)}
    rules, target = released()
    (error_rule,) = [r for r in rules if r["alert"] == "LlamaserveHighErrorRate"]
    for name, matchers in selectors(error_rule["expr"]):
        assert name == "llamaserve_requests_total"
        for route in generation:
            assert matches({**target, "route": route, "status": "500"}, matchers), route
        for route in ("/ready", "/health", "/metrics", "/v1/models", "/tokenize", "unmatched"):
            assert not matches({**target, "route": route, "status": "503"}, matchers), f"{route} counts"


def test_there_is_an_alert_for_no_target_at_all():
    rules, _ = released()
    assert any(r["expr"].startswith("absent(up{") for r in rules), "`up == 0` cannot fire without a target"

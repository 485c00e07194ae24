"""The chart's alert rules select series that exist: each selector of each rule, rendered with the chart's defaults
(and its ServiceMonitor on, which the rules come with), matches a series that the ServiceMonitor's scrape of a real
server's /metrics gives Prometheus: the server's own labels plus the target labels the Prometheus Operator adds."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tests.test_deploy_helm import by_kind, render

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


@pytest.fixture(scope="module")
def scraped_series(tiny_model) -> list[tuple[str, dict[str, str]]]:
    """The series of a real server after a timed-out generation (a 5xx on a generation route) and a rate-limited
    request, as (name, labels)."""
    srv = ServerProcess(["--request-timeout-s", "0.05", "--rate-limit-rpm", "2", "--rate-limit-tpm", "0"]).wait_ready()
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60) as client:
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "ignore_eos": True}
            statuses = [client.post("/v1/chat/completions", json=chat).status_code for _ in range(3)]
            assert statuses[0] == 504 and statuses[-1] == 429, statuses
            text = client.get("/metrics").text
    finally:
        srv.stop()
    return [(s.name, dict(s.labels)) for family in text_string_to_metric_families(text) for s in family.samples]


@pytest.mark.engine
def test_every_alert_selector_matches_a_scraped_series(scraped_series):
    rules, target = released()
    series = [(name, {**labels, **target}) for name, labels in scraped_series]
    series.append(("up", dict(target)))  # Prometheus' own series for each target
    for rule in rules:
        found = selectors(rule["expr"])
        assert found, f"{rule['alert']} selects nothing by label"
        for name, matchers in found:
            assert any(n == name and matches(labels, matchers) for n, labels in series), (
                f"{rule['alert']}: {name}{{{matchers}}} matches no series the scrape gives")

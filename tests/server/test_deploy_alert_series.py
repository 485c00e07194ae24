"""The chart's alert rules against a real server: every selector matches a series its scrape gives (with the
target labels the ServiceMonitor adds). The rules' reading: tests/deploy/test_deploy_alert_series.py."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tests.deploy.test_deploy_alert_series import matches, released, selectors


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

"""The chart's dashboard and alert rules against the shared real server: every metric a panel or rule uses is
served. The dashboard and rules themselves: tests/deploy/test_deploy_monitoring.py."""

from __future__ import annotations

import pytest

from tests.deploy.test_deploy_monitoring import (GUARD_PREFIX, PROMETHEUS_SERIES, metric_names, served_names,
                                                 shipped)


@pytest.mark.engine
def test_every_metric_a_panel_or_rule_uses_is_served(server, client):
    # One streamed request first, so the engine has reported once (vLLM registers some series on first use).
    with client.stream("POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
    }) as resp:
        assert resp.status_code == 200
        resp.read()
    served = served_names(client.get("/metrics").text)
    assert "llamaserve_requests_total" in served and "vllm:kv_cache_usage_perc" in served
    dashboard, rules = shipped()
    users = [(f"panel {p['title']!r}", t["expr"], "optional" in p.get("description", "").lower())
             for p in dashboard["panels"] for t in p.get("targets", [])]
    users += [(f"alert {r['alert']}", r["expr"], False) for r in rules]
    for where, expr, optional in users:
        missing = metric_names(expr) - served - PROMETHEUS_SERIES
        # Guard metrics exist only once the guard feature ships; only a panel marked optional may wait for them.
        if optional:
            missing = {m for m in missing if not m.startswith(GUARD_PREFIX)}
        assert not missing, f"{where} uses {sorted(missing)}, which /metrics does not serve"

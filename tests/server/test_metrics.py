"""/metrics: our registry (per app) plus vLLM's own; request ids echoed and carried into the access log."""

from __future__ import annotations


from tests.probes import access_lines, metric
from tests.sse_client import read_events

PASS = {"extra-parameters": "pass-through"}


def test_metrics_count_requests_tokens_and_latencies(server, client):
    before = client.get("/metrics").text
    prompt_before = metric(before, "llamaserve_prompt_tokens_total") or 0
    done_before = metric(before, "llamaserve_requests_total", route="/v1/chat/completions", method="POST", status="200") or 0
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "ignore_eos": True}
    events, done = read_events(client, "/v1/chat/completions", {**body, "stream": True}, headers=PASS)
    full = client.post("/v1/chat/completions", json=body, headers=PASS).json()
    assert done
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert metric(text, "llamaserve_requests_total", route="/v1/chat/completions", method="POST", status="200") == done_before + 2
    assert metric(text, "llamaserve_prompt_tokens_total") == prompt_before + 2 * full["usage"]["prompt_tokens"]
    assert metric(text, "llamaserve_completion_tokens_total") >= 16
    for name in ("llamaserve_time_to_first_token_seconds_count", "llamaserve_inter_token_latency_seconds_count"):
        assert metric(text, name) >= 1, name
    assert metric(text, "llamaserve_e2e_request_latency_seconds_count", route="/v1/chat/completions") >= 2
    assert metric(text, "llamaserve_requests_in_flight") == 0
    assert metric(text, "llamaserve_engine_requests_in_flight") == 0
    # vLLM's own metrics, from the global registry of the server process
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert metric(text, name) is not None, name


def test_rejections_are_counted_by_reason(client):
    before = metric(client.get("/metrics").text, "llamaserve_rejected_requests_total", reason="body_too_large") or 0
    client.post("/v1/completions", content=b"x" * (5 << 20), headers={"content-type": "application/json"})
    after = metric(client.get("/metrics").text, "llamaserve_rejected_requests_total", reason="body_too_large")
    assert after == before + 1


def test_request_ids_are_echoed_and_logged(server, client):
    # ignore_eos: random weights may sample the end of text after one token (a CI run saw completion_tokens 1).
    resp = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True},
                       headers={"x-request-id": "trace-me-123", **PASS})
    assert resp.headers["x-request-id"] == "trace-me-123" == resp.headers["x-ms-client-request-id"]
    resp = client.get("/info", headers={"x-ms-client-request-id": "azure-456"})
    assert resp.headers["x-request-id"] == "azure-456"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    lines = {line["request_id"]: line for line in access_lines(server.log_tail(10**7))}
    line = lines["trace-me-123"]
    assert line["status"] == 200 and line["path"] == "/v1/completions" and line["prompt_tokens"] >= 1
    assert line["completion_tokens"] == 2 and line["latency_ms"] > 0 and line["key_id"] is None
    assert "prompt" not in line  # log_prompts is off by default
    assert lines["azure-456"]["status"] == 200


def test_unknown_routes_share_one_label(client):
    client.get("/nope/" + "x" * 50)
    text = client.get("/metrics").text
    assert metric(text, "llamaserve_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert "/nope/" not in text

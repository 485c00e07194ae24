"""Traces from a real server: the tiny model on vLLM with a local tiny Llama Guard (tests/tiny_guard.py), exporting
OTLP/HTTP to a real receiver in the test process (tests/otlp_receiver.py), driven by real clients."""

from __future__ import annotations

import statistics
import time

import httpx
import openai
import pytest

from tests.conftest import CACHE_DIR, ServerProcess
from tests.otlp_receiver import INTERNAL, SERVER, OtlpReceiver, ReceivedSpan
from tests.probes import sse_events

pytestmark = pytest.mark.engine

KEY = "t" * 32
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
ERROR = 2  # OTLP's Status.STATUS_CODE_ERROR
SLOW_COLLECTOR_S = 4.0
EXPORT_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tiny_model, receiver):
    from tests.tiny_guard import ensure_tiny_guard

    safe_guard = ensure_tiny_guard(CACHE_DIR, "safe")
    srv = ServerProcess(
        ["--guard", "local", "--guard-model", str(safe_guard), "--guard-check", "prompt", "--api-keys", KEY,
         "--rate-limit-rpm", "0", "--rate-limit-tpm", "0",
         # One request at a time and none waiting: a second request while a stream runs is refused (429).
         "--max-concurrent-requests", "1", "--max-queued-requests", "0",
         "--otlp-traces-endpoint", receiver.endpoint, "--otlp-traces-protocol", "http/protobuf",
         "--trace-sample-ratio", "1", "--trace-service-name", "llamaserve-test",
         "--trace-max-queue-size", "64", "--trace-export-timeout-s", str(EXPORT_TIMEOUT_S)],
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},  # the SDK's batch delay (ms): spans reach the receiver soon
        allow_unauthenticated=False,
    )
    try:
        yield srv.wait_ready()
    finally:
        srv.stop_in_background()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)


def trace_of(traceparent: str) -> str:
    return traceparent.split("-")[1]


def span_of(traceparent: str) -> str:
    return traceparent.split("-")[2]


def is_request_span(span: ReceivedSpan) -> bool:
    """llamaserve's SERVER span of a request (vLLM's llm_request is a SERVER span too)."""
    return span.kind == SERVER and "gen_ai.operation.name" in span.attributes


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_a_chat_request_is_one_trace_from_the_gateway_through_the_guard_to_vllm(client, receiver):
    raw = client.chat.completions.with_raw_response.create(
        model=client.models.list().data[0].id, messages=[{"role": "user", "content": "hello"}], max_tokens=8,
        temperature=0.7, extra_headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
    reply = raw.parse()
    assert trace_of(raw.headers["traceparent"]) == TRACE_ID

    def complete(spans):
        names = {s.name for s in spans if s.trace_id == TRACE_ID}
        return {"llm_request", "guard", "admission"} <= names and any(n.startswith("chat ") for n in names)

    receiver.wait_for(complete)
    spans = receiver.of_trace(TRACE_ID)
    server_span = one(spans, f"chat {reply.model}")
    assert server_span.kind == SERVER and server_span.parent_id == CALLER_SPAN
    assert server_span.span_id == span_of(raw.headers["traceparent"]) and server_span.service == "llamaserve-test"
    attrs = server_span.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == reply.model
    assert attrs["gen_ai.response.id"] == reply.id and attrs["gen_ai.response.model"] == reply.model
    assert attrs["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert attrs["gen_ai.response.finish_reasons"] == [reply.choices[0].finish_reason]
    assert attrs["gen_ai.request.temperature"] == 0.7 and attrs["gen_ai.request.max_tokens"] == 8
    assert attrs["http.response.status_code"] == 200 and attrs["llamaserve.key_id"] != KEY
    assert KEY not in str(attrs)
    gate = one(spans, "gate")
    admission, guard = one(spans, "admission"), one(spans, "guard")
    assert gate.parent_id == server_span.span_id and admission.parent_id == gate.span_id
    assert guard.parent_id == server_span.span_id and guard.kind == INTERNAL
    assert (guard.attributes["llamaserve.guard.stage"], guard.attributes["llamaserve.guard.verdict"]) == (
        "prompt", "safe")
    # vLLM's own span, joined under the request's, with its engine timings.
    engine = one(spans, "llm_request")
    assert engine.parent_id == server_span.span_id
    assert engine.attributes["gen_ai.usage.completion_tokens"] == reply.usage.completion_tokens
    for timing in ("gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token",
                   "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode"):
        assert engine.attributes[timing] >= 0, timing
    assert server_span.start_ns <= engine.start_ns <= engine.end_ns <= server_span.end_ns


def test_refused_requests_have_spans_with_their_error_and_a_streams_span_ends_with_it(server, receiver):
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        unauthorised = http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer wrong"})
        invalid = http.post("/v1/chat/completions", json={**chat, "temperature": 5}, headers=auth)
        streamed = {**chat, "stream": True, "max_tokens": 64, "ignore_eos": True}
        with http.stream("POST", "/v1/chat/completions", json=streamed, headers=auth) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            # The stream holds the server's one slot: this one is refused at admission.
            overloaded = http.post("/v1/chat/completions", json=chat, headers=auth)
            rest = "\n\n".join([first, *(line for line in lines if line.startswith("data:"))]) + "\n\n"
            stream_done_ns = time.time_ns()
            stream_traceparent = stream.headers["traceparent"]
    assert [r.status_code for r in (unauthorised, invalid, overloaded)] == [401, 400, 429]
    refused = {r.status_code: (trace_of(r.headers["traceparent"]), r.json()["error"]["code"])
               for r in (unauthorised, invalid, overloaded)}
    stream_trace = trace_of(stream_traceparent)

    def servers(spans):
        wanted = {trace for trace, _ in refused.values()} | {stream_trace}
        found = {s.trace_id: s for s in spans if is_request_span(s) and s.trace_id in wanted}
        return found if len(found) == len(wanted) else None

    found = receiver.wait_for(servers)
    for status, (trace, code) in refused.items():
        span = found[trace]
        assert span.status_code == ERROR, status
        assert (span.attributes["http.response.status_code"], span.attributes["error.type"]) == (status, code)
    events, done = sse_events(rest)
    assert done and events[-1]["usage"]["completion_tokens"] == 64
    span = found[stream_trace]
    assert span.attributes["gen_ai.usage.output_tokens"] == 64
    # It ended once the stream's last byte was sent: before the client had read it all (plus 1 s for scheduling on
    # a loaded machine), and after the refusal that came while it ran.
    assert span.end_ns <= stream_done_ns + 1_000_000_000
    assert span.end_ns >= found[refused[429][0]].end_ns


def test_a_beam_search_records_its_steps_and_each_steps_engine_request_in_its_trace(server, receiver):
    body = {"prompt": "once upon", "use_beam_search": True, "best_of": 2, "temperature": 0, "max_tokens": 5,
            "ignore_eos": True}
    reply = httpx.post(server.base_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                       timeout=60)
    assert reply.status_code == 200
    trace = trace_of(reply.headers["traceparent"])
    server_span = receiver.wait_for(
        lambda spans: next((s for s in spans if s.trace_id == trace and is_request_span(s)), None))
    steps = [attrs for name, attrs in server_span.events if name == "beam_step"]
    assert [s["beam.step"] for s in steps] == [1, 2, 3, 4, 5] and all(s["beam.live"] == 2 for s in steps[1:])
    assert server_span.attributes["llamaserve.generation_mode"] == "beam"
    engine = [s for s in receiver.of_trace(trace) if s.name == "llm_request"]
    assert engine and all(s.parent_id == server_span.span_id for s in engine)


def _latencies(client, n: int) -> list[float]:
    model = client.models.list().data[0].id
    took = []
    for _ in range(n):
        started = time.perf_counter()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        took.append(time.perf_counter() - started)
    return took


def test_a_slow_or_absent_collector_does_not_slow_requests(client, receiver):
    baseline = _latencies(client, 8)
    # Slower than the export time limit: every export waits EXPORT_TIMEOUT_S and fails, as with a collector that
    # takes connections and never answers; spans past the bounded queue are dropped.
    receiver.delay_s = SLOW_COLLECTOR_S
    slow = _latencies(client, 8)
    receiver.close()  # then no collector at all: connections refused
    absent = _latencies(client, 8)
    print(f"median latency: collector up {statistics.median(baseline) * 1000:.0f} ms, slow "
          f"{statistics.median(slow) * 1000:.0f} ms, absent {statistics.median(absent) * 1000:.0f} ms")
    # An export that held a request would add at least the export time limit (2 s) to it: each request stays
    # under half of that.
    assert max(slow) < EXPORT_TIMEOUT_S / 2 and max(absent) < EXPORT_TIMEOUT_S / 2, (baseline, slow, absent)

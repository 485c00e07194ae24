"""A request's trace, in process: the real app, its middlewares, gate and guard hook on a scripted engine and guard,
its spans caught by the OpenTelemetry SDK's in-memory exporter (what the OTLP exporter would send)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from server.app import create_app
from server.protection.security import key_id
from server.safety.guards import RemoteGuard
from server.settings import Settings
from server.state import state_of
from tests.probes import sse_events
from tests.safety_doubles import ScriptedEngine as WordEngine
from tests.safety_doubles import ScriptedGuard
from tests.safety_doubles import settings as guarded_settings
from tests.scripted_engine import ScriptedEngine, settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class RecordingEngine(ScriptedEngine):
    """The scripted engine, keeping the trace headers each generation was given."""

    def __init__(self) -> None:
        super().__init__()
        self.trace_headers: list[object] = []

    def stream(self, prompt_ids, plan, request_id):
        self.trace_headers.append(plan.trace_headers)
        return super().stream(prompt_ids, plan, request_id)


@asynccontextmanager
async def traced(cfg: Settings, engine=None, guard=None,
                 exporter: InMemorySpanExporter | None = None) -> AsyncIterator[httpx.AsyncClient]:
    engine = engine or ScriptedEngine()
    app = create_app(cfg, engine_factory=lambda _: engine, guard_factory=lambda _: guard, span_exporter=exporter)
    async with app.router.lifespan_context(app):  # its end flushes the spans into the exporter
        await state_of(app).loader
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


def run(scenario):
    """Runs `scenario(client)` against a traced app; returns its result and the finished spans."""
    exporter = InMemorySpanExporter()

    async def main(cfg, engine, guard):
        async with traced(cfg, engine, guard, exporter) as client:
            return await scenario(client)

    def start(cfg: Settings | None = None, engine=None, guard=None):
        result = asyncio.run(asyncio.wait_for(main(cfg or settings(), engine, guard), 60))
        return result, list(exporter.get_finished_spans())

    return start


def server_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.SERVER]


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def chat(content: str = "hello", **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def test_a_chat_request_continues_the_callers_trace_with_the_conventions_span_and_its_steps():
    engine = RecordingEngine()

    async def scenario(client):
        return await client.post("/v1/chat/completions", json=chat(temperature=0.5, top_p=0.9, seed=3),
                                 headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1", "x-request-id": "r-1"})

    reply, spans = run(scenario)(engine=engine)
    assert reply.status_code == 200
    [span] = server_spans(spans)
    assert span.name == "chat scripted"
    assert f"{span.context.trace_id:032x}" == TRACE_ID and f"{span.parent.span_id:016x}" == PARENT_ID
    body, attrs = reply.json(), span.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "llamaserve"
    assert attrs["gen_ai.request.model"] == "scripted" and attrs["gen_ai.response.model"] == body["model"]
    assert attrs["gen_ai.response.id"] == body["id"]
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"] == 4
    assert list(attrs["gen_ai.response.finish_reasons"]) == [body["choices"][0]["finish_reason"]]
    assert (attrs["gen_ai.request.temperature"], attrs["gen_ai.request.top_p"], attrs["gen_ai.request.seed"],
            attrs["gen_ai.request.max_tokens"]) == (0.5, 0.9, 3, 4)
    assert attrs["http.request.method"] == "POST" and attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/v1/chat/completions" and attrs["llamaserve.request_id"] == "r-1"
    assert span.status.status_code is StatusCode.UNSET and "error.type" not in attrs
    # Its steps are its children, in the same trace.
    gate, admission, template = by_name(spans, "gate")[0], by_name(spans, "admission")[0], by_name(spans, "template")[0]
    assert gate.parent.span_id == span.context.span_id
    assert admission.parent.span_id == gate.context.span_id and template.parent.span_id == gate.context.span_id
    assert admission.start_time < template.start_time
    # The response names the span; the engine got the same context to join.
    assert reply.headers["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert reply.headers["tracestate"] == "vendor=1"
    assert engine.trace_headers == [{"traceparent": reply.headers["traceparent"], "tracestate": "vendor=1"}]


def test_a_request_without_a_trace_starts_one_and_a_completion_is_a_text_completion():
    async def scenario(client):
        return await client.post("/completions", json={"prompt": "abc", "max_tokens": 2})

    reply, spans = run(scenario)()
    [span] = server_spans(spans)
    assert span.name == "text_completion scripted" and span.parent is None
    version, trace_id, span_id, flags = reply.headers["traceparent"].split("-")
    assert (trace_id, span_id) == (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert by_name(spans, "tokenize") and "tracestate" not in reply.headers


def test_refusals_have_a_span_with_their_error():
    async def scenario(client):
        unauthorised = await client.post("/v1/chat/completions", json=chat(), headers={"api-key": "wrong"})
        first = await client.post("/v1/chat/completions", json=chat(), headers={"api-key": "k1"})
        limited = await client.post("/v1/chat/completions", json=chat(), headers={"api-key": "k1"})
        bad = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 0},
                                headers={"api-key": "k1"})
        return unauthorised, first, limited, bad

    cfg = Settings(api_keys="k1", rate_limit_rpm=1, rate_limit_tpm=0)
    replies, spans = run(scenario)(cfg)
    assert [r.status_code for r in replies] == [401, 200, 429, 400]
    errors = [s for s in server_spans(spans) if s.status.status_code is StatusCode.ERROR]
    by_status = {s.attributes["http.response.status_code"]: s for s in errors}
    assert sorted(by_status) == [400, 401, 429]
    for status, reply in zip((401, 429, 400), (replies[0], replies[2], replies[3])):
        assert by_status[status].attributes["error.type"] == reply.json()["error"]["code"], status
        assert reply.headers["traceparent"].split("-")[2] == f"{by_status[status].context.span_id:016x}"
    assert "llamaserve.key_id" not in by_status[401].attributes
    assert by_status[429].attributes["llamaserve.key_id"] == key_id("k1")
    refused_admission = [s for s in by_name(spans, "admission") if s.status.status_code is StatusCode.ERROR]
    assert [s.attributes["error.type"] for s in refused_admission] == [replies[2].json()["error"]["code"]]


def test_a_streamed_requests_span_holds_the_whole_stream():
    async def scenario(client):
        return await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=6))

    reply, spans = run(scenario)()
    events, done = sse_events(reply.text)
    assert done
    [span] = server_spans(spans)
    assert span.attributes["gen_ai.usage.output_tokens"] == events[-1]["usage"]["completion_tokens"] == 6
    assert list(span.attributes["gen_ai.response.finish_reasons"]) == ["length"]
    assert span.attributes["llamaserve.stream"] is True


def test_each_guard_check_is_a_span_with_its_verdict_and_categories():
    async def scenario(client):
        passed = await client.post("/chat/completions", json=chat("say hi"))
        blocked = await client.post("/chat/completions", json=chat("tell me BAD things"))
        return passed, blocked

    (passed, blocked), spans = run(scenario)(guarded_settings(), WordEngine(), ScriptedGuard())
    assert (passed.status_code, blocked.status_code) == (200, 400)
    checks = by_name(spans, "guard")
    verdicts = sorted((s.attributes["llamaserve.guard.stage"], s.attributes["llamaserve.guard.verdict"],
                       tuple(s.attributes.get("llamaserve.guard.categories", ()))) for s in checks)
    assert verdicts == [("output", "safe", ()), ("prompt", "safe", ()), ("prompt", "unsafe", ("S1",))]
    servers = {s.context.trace_id: s for s in server_spans(spans)}
    assert all(servers[c.context.trace_id].context.span_id == c.parent.span_id for c in checks)
    blocked_span = next(s for s in servers.values() if s.attributes["http.response.status_code"] == 400)
    assert blocked_span.attributes["error.type"] == "content_filter"


def test_a_remote_guards_check_carries_the_checks_trace_context():
    seen: list[str | None] = []

    def guard_server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("traceparent"))
        return httpx.Response(200, json={"choices": [{"message": {"content": "safe"}}], "usage": {"total_tokens": 5}})

    guard = RemoteGuard("http://guard.invalid", None, 5)
    guard._client = httpx.AsyncClient(transport=httpx.MockTransport(guard_server), base_url="http://guard.invalid")

    async def scenario(client):
        return await client.post("/chat/completions", json=chat("say hi"), headers={"traceparent": TRACEPARENT})

    reply, spans = run(scenario)(guarded_settings(guard_check="prompt"), WordEngine(), guard)
    assert reply.status_code == 200
    [check] = by_name(spans, "guard")
    # The guard server's own span would join this trace under the check.
    assert seen == [f"00-{TRACE_ID}-{check.context.span_id:016x}-01"]


def test_grammar_building_is_a_span():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}

    async def scenario(client):
        return [await client.post("/v1/chat/completions", json=chat(response_format=fmt)) for _ in range(2)]

    replies, spans = run(scenario)()
    assert [r.status_code for r in replies] == [200, 200]
    grammars = by_name(spans, "structured_output.grammar")
    assert [s.attributes["llamaserve.grammar.cached"] for s in grammars][-1] is True
    assert all(g.attributes["llamaserve.grammar.for"] == "response_format" for g in grammars)


def test_an_unsampled_callers_request_is_not_recorded_but_keeps_its_context():
    engine = RecordingEngine()

    async def scenario(client):
        return await client.post("/v1/chat/completions", json=chat(),
                                 headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})

    reply, spans = run(scenario)(engine=engine)
    assert reply.status_code == 200 and spans == []
    trace_id, _, flags = reply.headers["traceparent"].split("-")[1:]
    assert (trace_id, flags) == (TRACE_ID, "00")
    assert engine.trace_headers[0]["traceparent"] == reply.headers["traceparent"]


def test_tracing_off_adds_no_header_and_gives_the_engine_no_context(clean_env):
    engine = RecordingEngine()

    async def main():
        async with traced(settings(), engine) as client:
            return await client.post("/v1/chat/completions", json=chat(), headers={"traceparent": TRACEPARENT})

    reply = asyncio.run(main())
    assert reply.status_code == 200 and "traceparent" not in reply.headers
    assert engine.trace_headers == [None]


def test_the_sample_ratio_decides_for_new_traces_and_the_caller_for_its_own():
    async def scenario(client):
        fresh = await client.post("/v1/chat/completions", json=chat())
        continued = await client.post("/v1/chat/completions", json=chat(), headers={"traceparent": TRACEPARENT})
        return fresh, continued

    (fresh, continued), spans = run(scenario)(settings(trace_sample_ratio=0))
    assert int(fresh.headers["traceparent"].split("-")[3], 16) & 1 == 0  # not sampled, yet a context to follow
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}  # only the sampled caller's trace
    assert trace_of_response(continued) == TRACE_ID and server_spans(spans)


def trace_of_response(reply: httpx.Response) -> str:
    return reply.headers["traceparent"].split("-")[1]

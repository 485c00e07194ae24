"""A real OTLP/HTTP traces receiver in the test process: what a collector (Jaeger, Tempo, the OpenTelemetry
Collector) receives on its port 4318 at /v1/traces, decoded with opentelemetry-proto.

`delay_s` makes it answer late (a slow collector); `close()` takes it away (a collector that is down)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SERVER = Span.SPAN_KIND_SERVER
INTERNAL = Span.SPAN_KIND_INTERNAL


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    service: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int  # Status.STATUS_CODE_ERROR is 2


class OtlpReceiver:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(ReceivedSpan(
                        service=resource.get("service.name", ""), trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), name=s.name, kind=s.kind,
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                        attributes={a.key: value_of(a.value) for a in s.attributes},
                        events=[(e.name, {a.key: value_of(a.value) for a in e.attributes}) for e in s.events],
                        status_code=s.status.code))
        with self._changed:
            self.exports += 1
            self.spans.extend(received)
            self._changed.notify_all()

    def wait_for(self, found: Callable[[list[ReceivedSpan]], Any], timeout: float = 30) -> Any:
        """Waits until `found(spans)` is truthy and returns it; AssertionError with what came after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (result := found(list(self.spans))):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({(s.trace_id[:8], s.name) for s in self.spans})
                    raise AssertionError(f"not received within {timeout} s; received: {names}")
                self._changed.wait(left)
            return result

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._changed:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A generation request's SERVER span, in OpenTelemetry's GenAI conventions: `chat {model}` or
`text_completion {model}`, from the request's first byte to its response's last, refusals included.

Outermost middleware, added only when tracing is on. It continues the caller's W3C trace (`traceparent`,
`tracestate`), makes the span current for every layer inside (their child spans and the engine's trace headers
hang off it), returns the span's own `traceparent` (and the caller's `tracestate`) in the response headers, and when
the exchange has closed (server/observe/exchange.py: usage counted, cleanups run) writes what it learnt into the
span: `gen_ai.*` usage and response, `http.*`, the request id, the key id (never the key), the error's type.
The routes add the request's own `gen_ai.request.*` attributes (`tracing.annotate`).
"""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Tracer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observe.exchange import exchange_in
from server.observe.tracing import PROPAGATOR, failed

PROVIDER = "llamaserve"
_TRACE_HEADERS = ("traceparent", "tracestate")
_ERROR_BODY_LIMIT = 16 * 1024  # error bodies are small; a larger one is not read for its code


def operation_of(method: str, path: str) -> str | None:
    """The GenAI operation a request performs, by its route; None for routes that generate nothing."""
    if method != "POST":
        return None
    path = path.rstrip("/")
    if path.endswith("/chat/completions") or path.endswith("/responses"):
        return "chat"
    if path.endswith("/completions"):
        return "text_completion"
    return None


class RequestSpanMiddleware:
    def __init__(self, app: ASGIApp, tracer: Tracer):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = operation_of(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if operation is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        parent = PROPAGATOR.extract({name: headers[name] for name in _TRACE_HEADERS if name in headers})
        span = self.tracer.start_span(operation, context=parent, kind=SpanKind.SERVER,
                                      attributes=_request_attributes(scope, operation, headers))
        in_span = trace.set_span_in_context(span, parent)
        echoed: dict[str, str] = {}
        PROPAGATOR.inject(echoed, context=in_span)
        echoed_headers = [(k.encode(), v.encode()) for k, v in echoed.items()]
        response = _Response()

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *echoed_headers]}
            elif message["type"] == "http.response.body" and response.status >= 400:
                response.keep(message.get("body", b""))
            await send(message)

        token = context.attach(in_span)
        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            failed(span, type(exc).__name__, str(exc))
            raise
        finally:
            context.detach(token)
            if span.is_recording():
                _finish(span, operation, scope, response)
            span.end()


class _Response:
    def __init__(self) -> None:
        self.status = 0
        self.error_body = bytearray()

    def keep(self, chunk: bytes) -> None:
        if len(self.error_body) + len(chunk) <= _ERROR_BODY_LIMIT:
            self.error_body += chunk

    def error_type(self) -> str:
        """The error body's code (server/errors.py's shape), else its type, else the status."""
        try:
            error = orjson.loads(self.error_body).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            error = {}
        code = error.get("code") or error.get("type") if isinstance(error, dict) else None
        return str(code) if code else str(self.status)


def _request_attributes(scope: Scope, operation: str, headers: Headers) -> dict[str, Any]:
    server = scope.get("server") or (None, None)
    client = scope.get("client") or (None, None)
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "server.address": server[0],
        "server.port": server[1],
        "client.address": client[0],
        "user_agent.original": headers.get("user-agent"),
    }
    return {k: v for k, v in attributes.items() if v is not None}


def _finish(span: Any, operation: str, scope: Scope, response: _Response) -> None:
    exchange = exchange_in(scope)
    status = response.status or 500
    if exchange is not None and exchange.client_gone and not exchange.completed:
        status = 499  # as the access log counts it: the client left before the response ended
    route = getattr(scope.get("route"), "path", None)
    model = (span.attributes or {}).get("gen_ai.request.model")
    span.update_name(f"{operation} {model}" if model else operation)
    attributes: dict[str, Any] = {"http.response.status_code": status, "http.route": route}
    if exchange is not None:
        attributes.update({
            "llamaserve.request_id": exchange.request_id,
            "llamaserve.key_id": exchange.key_id,
            "llamaserve.reject_reason": exchange.reject_reason,
            "gen_ai.response.model": exchange.model,
            "gen_ai.usage.input_tokens": exchange.prompt_tokens,
            "gen_ai.usage.output_tokens": exchange.completion_tokens,
        })
        if exchange.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(exchange.finish_reasons)
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if status == 499:
        failed(span, "client_closed_request", "the client closed the request before its response ended")
    elif status >= 400:
        failed(span, response.error_type(), f"HTTP {status}")

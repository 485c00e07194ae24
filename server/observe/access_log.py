"""Request ids, JSON access logs and per-route request metrics (the per-request record is server/observe/exchange.py)."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observe.exchange import Exchange, attach
from server.observe.metrics import Metrics

ID_HEADERS = ("x-request-id", "x-ms-client-request-id")
# A client's id is echoed into headers and logs: anything but a short plain token is replaced, not trusted.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

request_id_var: ContextVar[str] = ContextVar("llamaserve_request_id", default="-")
access_log = logging.getLogger("llamaserve.access")


def client_request_id(headers: Headers) -> str | None:
    for name in ID_HEADERS:
        value = headers.get(name)
        if value and _SAFE_ID.fullmatch(value):
            return value
    return None


class RequestContextMiddleware:
    """Outermost: names the request, echoes its id, and logs and counts it when its last byte has gone."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_prompts: bool):
        self.app = app
        self.metrics = metrics
        self.log_prompts = log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = client_request_id(Headers(scope=scope)) or uuid.uuid4().hex
        client = scope.get("client")
        ex = Exchange(rid, scope["method"], scope["path"], client[0] if client else None)
        attach(scope, ex)
        token = request_id_var.set(rid)
        ids = [(name.encode(), rid.encode()) for name in ID_HEADERS]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *ids, *ex.response_headers]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ex.completed = True
            await send(message)

        async def receive_watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not ex.completed:
                ex.client_gone = True
            return message

        try:
            await self.app(scope, receive_watched, send_with_id)
        finally:
            ex.close()
            self._record(scope, ex)
            request_id_var.reset(token)

    def _record(self, scope: Scope, ex: Exchange) -> None:
        # A client that left before its response ended is logged as nginx does (499), whatever was sent before.
        status = 499 if ex.client_gone and not ex.completed else ex.status or 500
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        latency = time.perf_counter() - ex.started
        m = self.metrics
        m.requests.labels(route_path, ex.method, str(status)).inc()
        m.latency.labels(route_path).observe(latency)
        if status in (401, 413, 429, 503, 504) or ex.reject_reason:
            m.rejected.labels(ex.reject_reason or _DEFAULT_REASONS.get(status, str(status))).inc()
        line: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": ex.request_id,
            "method": ex.method,
            "path": ex.path,
            "status": status,
            "latency_ms": round(latency * 1000, 2),
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": ex.completion_tokens,
            "key_id": ex.key_id,
            "model": ex.model,
            "client": ex.client,
        }
        if ex.reject_reason:
            line["reject_reason"] = ex.reject_reason
        if self.log_prompts:
            line["prompt"] = ex.prompt
            line["output"] = ex.output
        access_log.info(orjson.dumps(line).decode())


_DEFAULT_REASONS = {401: "unauthenticated", 413: "body_too_large", 429: "rate_limited", 503: "unavailable", 504: "timeout"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    """Every line carries the request id it was logged under; access lines are bare JSON objects."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access_handler = logging.StreamHandler(sys.stderr)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [access_handler]
    access_log.propagate = False

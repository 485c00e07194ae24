"""Every POST body is JSON, declared as such: `Content-Type: application/json`, with parameters (charset) or not.

Anything else answers 415 before a route reads the body. A `text/plain` (or form) POST is a CORS "simple request"
that any web page can make a visitor's browser send without a preflight; refusing it keeps other sites from
driving this server through its users' browsers, the keyless admin routes included.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, error_response
from server.observe.exchange import exchange_of_scope

JSON_MEDIA_TYPE = "application/json"


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            content_type = Headers(scope=scope).get("content-type")
            if not is_json(content_type):
                exchange_of_scope(scope).reject_reason = "unsupported_media_type"
                shown = "none" if content_type is None else repr(content_type[:100])
                err = APIError(415, f"request bodies must be JSON sent as `Content-Type: {JSON_MEDIA_TYPE}`; "
                                    f"got {shown}", param="Content-Type", code="unsupported_media_type")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)

"""The one place that shapes error responses.

Every error body has the OpenAI shape, so OpenAI SDK exceptions carry the message:
    {"error": {"message", "type", "param", "code", "status"}}
and, at top level, the Azure AI Model Inference fields `status`, `code`, `message`, plus `detail`
(a list of {loc, input, msg}) for parameter errors, as the azure-ai-inference SDK reads them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from engine.errors import EngineFailure, InvalidGenerationRequest

log = logging.getLogger("llamaserve.errors")


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        detail: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        inner: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.detail = detail
        self.headers = headers
        self.inner = inner  # error.innererror, e.g. Azure's content filter result


def bad_request(message: str, param: str | None = None, code: str = "invalid_parameter") -> APIError:
    return APIError(400, message, param=param, code=code)


# --- the gate's typed refusals: API errors (400) of their own types, so that a rule can be matched by its kind


class InvalidInput(APIError):
    """A request the gate (server/pipeline/validation.py, tools included) refuses: the caller's fault, naming the
    parameter at fault."""

    default_code = "invalid_parameter"

    def __init__(self, message: str, param: str | None, code: str | None = None):
        super().__init__(400, message, param=param, code=code or self.default_code)


class InvalidParameter(InvalidInput):
    """A value, or a combination of values, that cannot be served."""


class ContextLengthExceeded(InvalidInput):
    """The prompt, or the prompt plus max_tokens, does not fit in the model's context."""

    default_code = "context_length_exceeded"


class LimitExceeded(InvalidInput):
    """More work than the server's limits allow in one request; `code` says which limit."""


def from_invalid_input(exc: InvalidInput) -> APIError:
    """A gate's refusal as a plain API error: the same response."""
    return bad_request(exc.message, exc.param, exc.code)


def engine_error(exc: Exception) -> APIError:
    """The engine's failures (engine/errors.py): only a request it refuses as invalid is the caller's fault."""
    if isinstance(exc, InvalidGenerationRequest):
        return bad_request(exc.message, exc.param)
    if isinstance(exc, EngineFailure):
        if exc.busy:
            return APIError(503, exc.message, code="engine_overloaded", headers={"Retry-After": "1"})
        return APIError(500, exc.message, code="engine_error")
    return APIError(503, str(exc) or "the engine is not available", code="engine_unavailable",
                    headers={"Retry-After": "5"})


def error_body(err: APIError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": {
            "message": err.message,
            "type": _TYPES.get(err.status, "invalid_request_error" if err.status < 500 else "server_error"),
            "param": err.param,
            "code": err.code,
            "status": err.status,
        },
        "status": err.status,
        "code": err.code,
        "message": err.message,
    }
    if err.inner is not None:
        body["error"]["innererror"] = err.inner
    if err.detail is not None:
        body["detail"] = err.detail
    return body


def error_response(err: APIError) -> Response:
    return Response(
        orjson.dumps(error_body(err)), status_code=err.status, media_type="application/json", headers=err.headers
    )


# An echoed input is cut to this many characters: the input of a union error can be the whole field.
MAX_ECHOED_INPUT = 200


def _jsonable(value: Any) -> Any:
    """Echoing a client's input back must never fail, whatever it was, nor be bigger than a few lines."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        encoded = None
    if encoded is not None and len(encoded) <= MAX_ECHOED_INPUT:
        return value
    text = repr(value) if encoded is None else encoded.decode()
    return text if len(text) <= MAX_ECHOED_INPUT else text[:MAX_ECHOED_INPUT] + "..."


# A body of 100k bad items yields 100k errors: the response names the first few and counts the rest.
MAX_REPORTED_ERRORS = 10


def from_validation_errors(errors: list[dict[str, Any]], status: int = 400) -> APIError:
    detail = []
    for e in errors[:MAX_REPORTED_ERRORS]:
        loc = [str(part) for part in e.get("loc", ())]
        # Union types put the tried type in the path (e.g. "str", "list[str]"): the field name comes first.
        detail.append({"loc": ["body", *loc], "input": _jsonable(e.get("input")), "msg": e.get("msg", "invalid")})
    first = detail[0] if detail else {"loc": ["body"], "msg": "invalid request"}
    param = first["loc"][1] if len(first["loc"]) > 1 else None
    where = ".".join(first["loc"][1:2]) or "body"
    message = f"{where}: {first['msg']}"
    if len(errors) > 1:
        shown = f"; the first {len(detail)} are in detail" if len(errors) > len(detail) else ""
        message += f" (and {len(errors) - 1} more{shown})"
    return APIError(status, message, param=param, code="invalid_parameter", detail=detail)


def from_pydantic(exc: ValidationError) -> APIError:
    return from_validation_errors(exc.errors(include_url=False, include_context=False))


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(from_validation_errors(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", code="internal_error"))

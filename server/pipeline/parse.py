"""Request bodies into schemas: JSON, the counts bounded before validation, the `extra-parameters` header.

Bodies are parsed here rather than by FastAPI, so that every failure takes the documented error shape.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas import ExtraParametersMode, GenerationRequest
from schemas.extras import PASS_THROUGH_FIELDS, validate_pass_through
from server.errors import APIError, bad_request, from_pydantic, from_validation_errors

BodyModel = TypeVar("BodyModel", bound=BaseModel)


class CountLimits(Protocol):
    max_chat_messages: int
    max_prompts_per_request: int


def parse_body(raw: bytes, model: type[BodyModel], limits: CountLimits | None = None) -> BodyModel:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    if limits is not None:
        _check_counts(body, limits)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_pydantic(exc) from exc


def _check_counts(body: dict[str, Any], limits: CountLimits) -> None:
    """Counts checked before validation, whose cost grows with them (a second per ~100k items)."""
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > limits.max_chat_messages:
        raise bad_request(f"messages has {len(messages)} items, more than the limit of {limits.max_chat_messages}",
                          "messages", "too_many_messages")
    items = body.get("input")
    if isinstance(items, list) and len(items) > limits.max_chat_messages:
        raise bad_request(f"input has {len(items)} items, more than the limit of {limits.max_chat_messages}",
                          "input", "too_many_messages")
    prompt = body.get("prompt")
    # A list of token ids is one prompt, however long; any other list is a list of prompts.
    if isinstance(prompt, list) and len(prompt) > limits.max_prompts_per_request and not all(
        type(t) is int for t in prompt
    ):
        raise bad_request(f"prompt has {len(prompt)} prompts, more than the limit of "
                          f"{limits.max_prompts_per_request} per request", "prompt", "too_many_prompts")


def parse_request(raw: bytes, model: type[GenerationRequest], extra_header: str | None,
                  limits: CountLimits | None = None) -> GenerationRequest:
    req = parse_body(raw, model, limits)
    _apply_extra_parameters(req, extra_header)
    return req


def _apply_extra_parameters(req: GenerationRequest, header: str | None) -> None:
    try:
        mode = ExtraParametersMode(header or "error")
    except ValueError:
        raise bad_request(
            f"extra-parameters header must be one of error, drop, pass-through; got {header!r}", "extra-parameters"
        ) from None
    extras = req.extra_fields()
    if not extras or mode is ExtraParametersMode.drop:
        req.__pydantic_extra__ = {}
        return
    unknown = sorted(extras) if mode is ExtraParametersMode.error else sorted(set(extras) - PASS_THROUGH_FIELDS)
    if unknown:
        raise APIError(
            422,
            f"extra parameters {unknown} are not allowed"
            + (" (set the extra-parameters header to drop or pass-through)" if mode is ExtraParametersMode.error else ""),
            param=unknown[0],
            code="parameter_not_supported",
            detail=[{"loc": ["body", name], "input": extras[name], "msg": "Extra parameter not supported"} for name in unknown],
        )
    try:
        req.__pydantic_extra__ = validate_pass_through(extras)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False, include_context=False)) from exc

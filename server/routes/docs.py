"""OpenAPI for bodies the routes parse themselves (see `generation.parse_body`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document_bodies(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Adds those bodies' schemas to the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

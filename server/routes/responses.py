"""The Responses API's stored responses: retrieve, delete, cancel and list the input items, each only for the key
that created the response (another key's id is as unknown as one never stored). Creating one is a generation
route (server/routes/generate.py).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from server.errors import APIError
from server.observe.exchange import exchange_of
from server.pipeline.responses import gate
from server.state import state_of
from server.store.responses import StoreUnavailable

router = APIRouter(tags=["responses"])
PREFIXES = ("/v1", "", "/openai/v1")


def _json(body: dict) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def retrieve(request: Request, response_id: str) -> Response:
    record = await gate.load(state_of(request).responses, exchange_of(request).key_id, response_id)
    return _json(record.response)


async def delete(request: Request, response_id: str) -> Response:
    try:
        gone = await state_of(request).responses.delete(exchange_of(request).key_id, response_id)
    except StoreUnavailable as exc:
        raise gate.store_unavailable(exc) from exc
    if not gone:
        raise gate.not_found(response_id)
    return _json({"id": response_id, "object": "response.deleted", "deleted": True})


async def cancel(request: Request, response_id: str) -> Response:
    """Stops a background response still queued or in progress; a finished one is returned as it is."""
    state, owner = state_of(request), exchange_of(request).key_id
    record = await gate.load(state.responses, owner, response_id)
    if not record.response.get("background"):
        raise APIError(400, "only background responses can be cancelled", param="response_id",
                       code="invalid_parameter")
    if record.response["status"] in ("queued", "in_progress") and await state.response_runs.cancel(response_id):
        record = await gate.load(state.responses, owner, response_id)
    return _json(record.response)


async def input_items(request: Request, response_id: str, limit: int = Query(20, ge=1, le=100),
                      order: str = Query("desc", pattern="^(asc|desc)$"), after: str | None = None) -> Response:
    """OpenAI's list: newest first unless `order=asc`, `limit` at a time, from the item after `after`."""
    record = await gate.load(state_of(request).responses, exchange_of(request).key_id, response_id)
    items = record.input_items if order == "asc" else record.input_items[::-1]
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise APIError(400, f"after names no input item of response {response_id!r}", param="after",
                           code="invalid_parameter")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


for _prefix in PREFIXES:
    router.add_api_route(_prefix + "/responses/{response_id}", retrieve, methods=["GET"])
    router.add_api_route(_prefix + "/responses/{response_id}", delete, methods=["DELETE"])
    router.add_api_route(_prefix + "/responses/{response_id}/cancel", cancel, methods=["POST"])
    router.add_api_route(_prefix + "/responses/{response_id}/input_items", input_items, methods=["GET"])

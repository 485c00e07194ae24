"""GET /metrics: the app's registry (server/observe/metrics.py) and prometheus_client's global one, where vLLM's are."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from server.models import adapters
from server.observe.exchange import exchange_of
from server.protection.security import is_admin
from server.state import state_of

router = APIRouter(tags=["meta"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Series that name LoRA adapters only to an admin key, and only when /metrics needs a key: an open /metrics
    or a tenant's key must not tell of other tenants' fine-tunes. Unless the operator shows them to every reader,
    for an endpoint picker that routes by loaded adapter and reaches /metrics inside the cluster alone."""
    state = state_of(request)
    protection = state.settings.protection
    if protection.metrics_show_adapters or (protection.metrics_require_key and is_admin(exchange_of(request).key_id)):
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
    hidden = adapters.all_names(state.settings, state.engine)
    return Response(state.metrics.render(hide_adapters=hidden), media_type=CONTENT_TYPE_LATEST)

"""Admin routes that load and unload LoRA adapters at run time, under vLLM's names so its clients carry over.

They exist only with `allow_runtime_lora` (else 404) and open only to `admin_api_keys` (server/models/adapters.py).
With a fleet (a Redis URL), a change is recorded for every replica to apply (server/fleet/adapters.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from engine.adapters import AdapterExists, AdapterNotFound, InvalidAdapter
from engine.errors import EngineUnavailable
from schemas.adapters import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from server.models import adapters
from server.adapter_settings import check_name
from server.errors import bad_request
from server.observe.exchange import exchange_of
from server.pipeline.parse import parse_body
from server.routes.docs import body_doc
from server.state import state_of

router = APIRouter(tags=["adapters"])
_FAILURES = (AdapterNotFound, AdapterExists, InvalidAdapter, EngineUnavailable)
# With a fleet, a change the other replicas could not be told of (Redis away) says so (`shared: false`).
_NOT_SHARED = (" On this replica only: the fleet's Redis is unreachable, so the other replicas are unchanged; repeat the "
               "call when it is back")
_REPEAT_LOAD = " (with load_inplace: true, as this replica has the adapter now)."


def _name(name: str) -> str:
    try:
        check_name(name)
    except ValueError as exc:
        raise bad_request(str(exc), "lora_name") from None
    return name


@router.post("/v1/load_lora_adapter", openapi_extra=body_doc(LoadLoRAAdapterRequest))
async def load_lora_adapter(request: Request) -> JSONResponse:
    state = state_of(request)
    adapters.require_admin(state.settings, request)
    body = parse_body(await request.body(), LoadLoRAAdapterRequest)
    engine = state.ready_engine()
    exchange_of(request).model = _name(body.lora_name)
    fleet = state.shared_adapters
    try:
        if fleet is None:
            adapter = await adapters.load(engine, body.lora_name, body.lora_path, body.load_inplace)
        else:
            adapter, shared = await fleet.load(engine, body.lora_name, body.lora_path, body.load_inplace)
    except _FAILURES as exc:
        raise adapters.adapter_error(exc) from exc
    message = f"Success: LoRA adapter '{adapter.name}' added successfully."
    card = {**adapters.model_card(adapter, engine, show_root=True), "message": message}
    if fleet is not None:
        card.update(shared=shared, message=message if shared else message + _NOT_SHARED + _REPEAT_LOAD)
    return JSONResponse(card)


@router.post("/v1/unload_lora_adapter", openapi_extra=body_doc(UnloadLoRAAdapterRequest))
async def unload_lora_adapter(request: Request) -> JSONResponse:
    state = state_of(request)
    adapters.require_admin(state.settings, request)
    body = parse_body(await request.body(), UnloadLoRAAdapterRequest)
    engine = state.ready_engine()
    exchange_of(request).model = body.lora_name
    fleet = state.shared_adapters
    try:
        if fleet is None:
            await engine.unload_adapter(body.lora_name)
        else:
            shared = await fleet.unload(engine, body.lora_name)
    except _FAILURES as exc:
        raise adapters.adapter_error(exc) from exc
    message = f"Success: LoRA adapter '{body.lora_name}' removed successfully."
    result = {"id": body.lora_name, "object": "model", "deleted": True, "message": message}
    if fleet is not None:
        result.update(shared=shared, message=message if shared else message + _NOT_SHARED + ".")
    return JSONResponse(result)

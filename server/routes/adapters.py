"""Admin routes that load and unload LoRA adapters at run time, under vLLM's names so its clients carry over.

They exist only with `allow_runtime_lora` (else 404) and open only to `admin_api_keys` (server/models/adapters.py).
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
    try:
        adapter = await adapters.load(engine, body.lora_name, body.lora_path, body.load_inplace)
    except _FAILURES as exc:
        raise adapters.adapter_error(exc) from exc
    return JSONResponse({**adapters.model_card(adapter, engine, show_root=True),
                         "message": f"Success: LoRA adapter '{adapter.name}' added successfully."})


@router.post("/v1/unload_lora_adapter", openapi_extra=body_doc(UnloadLoRAAdapterRequest))
async def unload_lora_adapter(request: Request) -> JSONResponse:
    state = state_of(request)
    adapters.require_admin(state.settings, request)
    body = parse_body(await request.body(), UnloadLoRAAdapterRequest)
    engine = state.ready_engine()
    exchange_of(request).model = body.lora_name
    try:
        adapter = await engine.unload_adapter(body.lora_name)
    except _FAILURES as exc:
        raise adapters.adapter_error(exc) from exc
    return JSONResponse({"id": adapter.name, "object": "model", "deleted": True,
                         "message": f"Success: LoRA adapter '{adapter.name}' removed successfully."})

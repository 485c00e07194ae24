"""The LoRA admin routes in process, on the app without an engine (the key and setting checks come before it is
needed). The settings and adapter checks: tests/unit/test_lora_checks.py."""

from __future__ import annotations

import asyncio

import httpx

from server.settings import Settings


def _post(settings: Settings, path: str, headers: dict | None = None) -> httpx.Response:
    from server.app import create_app

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json={"lora_name": "x", "lora_path": "/x"}, headers=headers or {})

    return asyncio.run(go())


def test_admin_routes_are_404_unless_runtime_loading_is_allowed(clean_env):
    for keyed in (Settings(), Settings(api_keys="k1", admin_api_keys="adm")):
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            r = _post(keyed, path, {"authorization": "Bearer adm"})
            assert r.status_code == 404 and "allow_runtime_lora" in r.json()["error"]["message"]


def test_admin_routes_pass_the_api_key_check_to_their_own(clean_env):
    keyed = Settings(api_keys="k1", admin_api_keys="adm", allow_runtime_lora=True)
    assert _post(keyed, "/v1/load_lora_adapter").status_code == 401
    assert _post(keyed, "/v1/load_lora_adapter", {"api-key": "k1"}).status_code == 403
    # the admin key gets past both checks: the next answer is the engine's (not loaded here)
    assert _post(keyed, "/v1/load_lora_adapter", {"api-key": "adm"}).status_code == 503
    # a server with no keys at all is open, admin routes included (settings refuse this once API keys are set)
    assert _post(Settings(allow_runtime_lora=True), "/v1/load_lora_adapter").status_code == 503

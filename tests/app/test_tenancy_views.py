"""What /metrics and /v1/models tell about LoRA adapters, by reader: adapter names only to an admin key on a
/metrics that needs a key, adapters' paths only to admin keys. In process, on the scripted engine with an adapter
registered as loaded; tests/server/test_lora.py holds the same on the real engine."""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge

from engine.adapters import Adapter
from tests.scripted_engine import InProcess, ScriptedEngine, settings

TENANT, OTHER, ADMIN = "tenant-key-0123456789", "other-key-0123456789", "admin-key-0123456789"
SECRET_PATH = "/srv/tenants/acme/beta-lora"


def _views(metrics_require_key: bool, metrics_show_adapters: bool = False) -> dict[str, dict[str, object]]:
    engine = ScriptedEngine()
    engine.adapters.put(Adapter("beta", 1, SECRET_PATH, SECRET_PATH, 8, None))
    cfg = settings(api_keys=f"{TENANT},{OTHER}", admin_api_keys=ADMIN, metrics_require_key=metrics_require_key,
                   metrics_show_adapters=metrics_show_adapters, lora_access={TENANT: ["beta"]})

    async def main():
        app_run = InProcess(engine, cfg)
        async with app_run as client:
            metrics = app_run.app.state.llama.metrics
            metrics.adapter_requests.labels("beta").inc()
            # vLLM's own LoRA series lists the running adapters in a label (its registry is the global one; this
            # stands in for it in the app's).
            Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                  ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                  registry=metrics.registry).labels("2", "", "beta").set(1)
            seen = {}
            for reader, key in (("none", None), ("tenant", TENANT), ("other", OTHER), ("admin", ADMIN)):
                headers = {"authorization": f"Bearer {key}"} if key else {}
                seen[reader] = {"metrics": await client.get("/metrics", headers=headers),
                                "models": await client.get("/v1/models", headers=headers)}
            return seen

    return asyncio.run(main())


def _names_beta(resp) -> bool:
    return "beta" in resp.text


def test_an_open_metrics_names_no_adapter_whoever_reads_it(clean_env):
    seen = _views(metrics_require_key=False)
    for reader in ("none", "tenant", "other", "admin"):
        resp = seen[reader]["metrics"]
        assert resp.status_code == 200 and b"llamaserve_requests_total" in resp.content
        assert not _names_beta(resp), reader
        assert "llamaserve_adapter_requests" not in resp.text and "lora_requests_info" not in resp.text


def test_a_keyed_metrics_names_adapters_to_admin_keys_only(clean_env):
    seen = _views(metrics_require_key=True)
    assert seen["none"]["metrics"].status_code == 401
    for reader in ("tenant", "other"):
        resp = seen[reader]["metrics"]
        assert resp.status_code == 200 and not _names_beta(resp), reader
    admin = seen["admin"]["metrics"]
    assert admin.status_code == 200
    assert 'llamaserve_adapter_requests_total{model="beta"} 1.0' in admin.text
    assert 'running_lora_adapters="beta"' in admin.text


def test_adapters_shown_on_metrics_reach_every_reader_as_the_endpoint_picker_reads_them(clean_env):
    # The Inference Gateway's endpoint picker scrapes /metrics without a key and routes by the adapters that
    # vllm:lora_requests_info names.
    seen = _views(metrics_require_key=False, metrics_show_adapters=True)
    for reader in ("none", "tenant", "other", "admin"):
        resp = seen[reader]["metrics"]
        assert resp.status_code == 200 and 'running_lora_adapters="beta"' in resp.text, reader
        assert 'llamaserve_adapter_requests_total{model="beta"} 1.0' in resp.text, reader
    # Adapters' paths on /v1/models stay for admin keys.
    assert SECRET_PATH not in seen["tenant"]["models"].text


def test_models_show_adapters_paths_to_admin_keys_only(clean_env):
    seen = _views(metrics_require_key=False)
    assert seen["none"]["models"].status_code == 401
    tenant = {m["id"]: m for m in seen["tenant"]["models"].json()["data"]}
    assert tenant["beta"]["parent"] == "scripted" and "root" not in tenant["beta"]
    assert SECRET_PATH not in seen["tenant"]["models"].text
    admin = {m["id"]: m for m in seen["admin"]["models"].json()["data"]}
    assert admin["beta"]["root"] == SECRET_PATH

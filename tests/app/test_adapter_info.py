"""/metrics shows the engine's adapter activity as vllm:lora_requests_info, one sample in the shape the endpoint
picker reads, in place of vLLM's own series of that name (which leaves out adapters whose requests all wait). In
process, on the scripted engine with an adapter activity whose scheduled counts the test sets."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY, Gauge
from prometheus_client.parser import text_string_to_metric_families

from engine.adapter_activity import AdapterActivity
from tests.scripted_engine import InProcess, ScriptedEngine, settings


def lora_info(text: str) -> list:
    return [s for f in text_string_to_metric_families(text) if f.name == "vllm:lora_requests_info" for s in f.samples]


def test_waiting_and_running_adapters_reach_metrics_in_place_of_vllms_series(clean_env):
    scheduled: dict[str, int] = {}
    engine = ScriptedEngine()
    engine.adapter_activity = AdapterActivity(2, lambda: dict(scheduled))
    # vLLM's own series, as its engine registers it in the process's global registry: it names no waiting adapter.
    vllms = Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                  ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=REGISTRY)
    vllms.labels("2", "", "").set_to_current_time()

    async def main():
        async with InProcess(engine, settings(metrics_show_adapters=True)) as client:
            idle = (await client.get("/metrics")).text
            with engine.adapter_activity.holding("alpha", 1), engine.adapter_activity.holding("beta", 1):
                scheduled["beta"] = 1
                before = time.time()
                busy = (await client.get("/metrics")).text
            return idle, busy, before

    try:
        idle, busy, before = asyncio.run(main())
    finally:
        REGISTRY.unregister(vllms)
    [sample] = lora_info(idle)
    assert sample.labels == {"max_lora": "2", "waiting_lora_adapters": "", "running_lora_adapters": ""}
    [sample] = lora_info(busy)
    assert sample.labels == {"max_lora": "2", "waiting_lora_adapters": "alpha", "running_lora_adapters": "beta"}
    assert sample.value >= before  # the newest reading is the one the picker takes


def test_no_adapter_series_with_lora_off(clean_env):
    async def main():
        async with InProcess(ScriptedEngine(), settings(metrics_show_adapters=True)) as client:
            return (await client.get("/metrics")).text

    assert lora_info(asyncio.run(main())) == []

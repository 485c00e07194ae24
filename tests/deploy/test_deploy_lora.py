"""The Helm chart's `lora` values reach the server as its LoRA settings, and admin keys only through the Secret."""

from __future__ import annotations

import helm_python
import pytest
import yaml

from tests.deploy.test_deploy_helm import by_kind, pod_templates, render, rendered_settings

LORA = {
    "adapters": {"support": "/adapters/support", "sql": "my-org/llama-sql-lora"},
    "allowRuntime": True,
    "access": {"1a2b3c4d": ["support"]},
    "maxLoras": 2,
    "maxLoraRank": 32,
    "maxCpuLoras": 4,
}


def test_lora_values_become_the_lora_settings(clean_env):
    docs = render({"lora": LORA, "secret": {"create": True, "apiKeys": ["k-0123456789abcdef"],
                                            "adminApiKeys": ["adm-0123456789abcdef"]}})
    spec = pod_templates(docs)[0][1]
    s = rendered_settings(spec, clean_env)
    assert s.lora_adapters == LORA["adapters"] and s.lora_access == LORA["access"]
    assert (s.allow_runtime_lora, s.max_loras, s.max_lora_rank, s.max_cpu_loras) == (True, 2, 32, 4)
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    secret = by_kind(docs, "Secret")[0]
    ref = env["LLAMASERVE_ADMIN_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert secret["stringData"][ref["key"]] == "adm-0123456789abcdef"
    assert "adm-0123456789" not in yaml.safe_dump(by_kind(docs, "Deployment"))


def test_no_lora_values_leave_lora_off(clean_env):
    spec = pod_templates(render({}))[0][1]
    names = {e["name"] for e in spec["containers"][0]["env"]}
    assert not {n for n in names if "LORA" in n or "ADMIN" in n}
    s = rendered_settings(spec, clean_env)
    assert (s.lora_adapters, s.allow_runtime_lora) == ({}, False)


def test_admin_keys_in_settings_or_a_created_secret_without_them_are_refused():
    with pytest.raises(helm_python.HelmError, match="Secret"):
        render({"settings": {"admin_api_keys": "plain-text-key"}})
    with pytest.raises(helm_python.HelmError, match="adminApiKeys"):
        render({"lora": {"allowRuntime": True}, "secret": {"create": True, "apiKeys": ["k-0123456789abcdef"]}})

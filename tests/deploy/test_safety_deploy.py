"""The "with guard" deployment files: preset, Helm values and Azure ML deployment serve the same settings, and
the two engines' GPU memory shares fit one GPU."""

from __future__ import annotations

from pathlib import Path

import helm_python
import yaml

from server.settings import ENV_PREFIX, load_settings
from tests.deploy.test_deploy_azureml import test_deployment_fields_routes_and_limits as check_azure_deployment

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "configs" / "presets"
PRESET = PRESETS / "with-guard" / "llama-3.1-8b-instruct-guard-3-1b.yaml"
HELM_VALUES = ROOT / "helm" / "examples" / "with-guard-values.yaml"
AZURE = ROOT / "deploy" / "azureml" / "with-guard" / "llama-3.1-8b-instruct-guard-3-1b.yml"
HARDWARE = yaml.safe_load((PRESETS / "hardware.yaml").read_text())


def settings_from_env(env: dict[str, str], clean_env):
    for name, value in env.items():
        clean_env.setenv(name, value)
    return load_settings()


def test_preset_pairs_the_8b_model_with_guard_3_1b_on_one_gpu(clean_env):
    s = load_settings(config=PRESET)
    assert s.model == load_settings(config=PRESETS / "llama-3.1-8b-instruct.yaml").model
    assert s.guard == "local" and s.guard_model == load_settings(config=PRESETS / "llama-guard-3-1b.yaml").model
    assert s.tensor_parallel_size * s.pipeline_parallel_size == 1
    assert s.gpu_memory_utilization + s.guard_gpu_memory_utilization <= 0.9
    assert s.guard_check == "both"
    # The guard reads every conversation the model can: its context holds the model's plus Llama Guard 3's
    # template and verdict (about 350 tokens; the server checks the exact figure at start).
    assert s.guard_max_model_len is not None and s.guard_max_model_len >= s.max_model_len + 512


def test_helm_values_serve_the_preset(clean_env):
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert yaml.safe_load(values["preset"]) == yaml.safe_load(PRESET.read_text()), "preset text drifted"
    report = helm_python.lint(ROOT / "helm" / "llamaserve", values)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report
    manifests = helm_python.Chart.load(ROOT / "helm" / "llamaserve").render(values, name="rel", namespace="llm")
    docs = [d for path, text in manifests.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if e["name"].startswith(ENV_PREFIX) and "value" in e}
    got = settings_from_env(env, clean_env).model_dump(exclude={"config"})
    assert got == load_settings(config=PRESET).model_dump(exclude={"config"})
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert pod["nodeSelector"] == HARDWARE["llama-3.1-8b-instruct"]["k8s_node_selector"]


def test_azureml_deployment_serves_the_preset_from_its_mounted_models(clean_env):
    check_azure_deployment(AZURE)
    d = yaml.safe_load(AZURE.read_text())
    assert d["instance_type"] == HARDWARE["llama-3.1-8b-instruct"]["azure_instance_type"]
    env = d["environment_variables"]
    assert all(isinstance(v, str) for v in env.values())
    assert not any(word in k for k in env for word in ("API_KEY", "HF_TOKEN", "SECRET")), "no secrets in YAML"
    for name in ("LLAMASERVE_MODEL", "LLAMASERVE_GUARD_MODEL"):
        assert not env[name].startswith("/"), "relative: found under AZUREML_MODEL_DIR wherever Azure mounts it"
    skip = {"config", "model", "guard_model", "request_timeout_s"}
    got = settings_from_env(env, clean_env).model_dump(exclude=skip)
    assert got == load_settings(config=PRESET).model_dump(exclude=skip)

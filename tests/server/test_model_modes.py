"""A base (non-chat) model found through AZUREML_MODEL_DIR, with settings from a YAML file: the deployment path.
Then the same server's end by a SIGKILL of its API process: its EngineCore and worker must follow."""

from __future__ import annotations

import shutil
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess
from tests.launches import LIMITS_TO_MODEL_MODES, planned, take
from tests.probes import alive, wait_until

ORPHAN_DEADLINE_S = 5


@planned("base_server", group=LIMITS_TO_MODEL_MODES)
def _launch_base_server(tiny_model, tmp_path_factory) -> ServerProcess:
    root = tmp_path_factory.mktemp("azureml")
    model_dir = root / "azureml-models" / "tiny-base" / "2"
    shutil.copytree(tiny_model, model_dir)
    (model_dir / "chat_template.jinja").unlink()  # a base model ships no chat template
    config = root / "settings.yaml"
    # Not the tiny model as far as the server knows, so the CPU-friendly engine settings come from the YAML.
    config.write_text("max_model_len: 256\nmax_n: 2\nenforce_eager: true\ncpu_kvcache_space_gib: 1\ndtype: bfloat16\n")
    return ServerProcess(["--config", str(config)], env={"AZUREML_MODEL_DIR": str(root)})


@pytest.fixture(scope="module")
def base_server(request):
    srv = take("base_server", request)
    yield srv
    srv.stop_in_background()


@pytest.fixture(scope="module")
def base(base_server):
    with httpx.Client(base_url=base_server.base_url, timeout=60) as c:
        yield c


def test_info_reports_a_text_generation_model_named_after_the_azure_model(base):
    assert base.get("/info").json() == {"model_name": "tiny-base", "model_type": "text-generation", "model_provider_name": "Meta"}


def test_yaml_settings_apply(base):
    assert base.get("/v1/models").json()["data"][0]["max_model_len"] == 256
    resp = base.post("/v1/completions", json={"prompt": "hi", "n": 3})
    assert resp.status_code == 400 and "at most 2" in resp.json()["error"]["message"]
    resp = base.post("/v1/completions", json={"prompt": "hi", "max_tokens": 300})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"


def test_completions_work_and_chat_says_why_not(base):
    assert base.post("/completions", json={"prompt": "hi", "max_tokens": 3}).json()["usage"]["completion_tokens"] >= 1
    resp = base.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400 and "chat template" in resp.json()["error"]["message"]


# Last in this module: it ends the module's server, whose last use this is (a server start saved).
def test_sigkill_of_the_api_process_takes_the_engine_with_it(base_server):
    srv = base_server
    try:
        descendants = psutil.Process(srv.proc.pid).children(recursive=True)
        names = " ".join(p.name() for p in descendants)
        assert "EngineCore" in names and "Worker" in names, names
        killed = time.monotonic()
        srv.proc.kill()  # only the API process, the way the OOM killer would: not its group
        srv.proc.wait(10)
        gone = wait_until(lambda: not alive(descendants), ORPHAN_DEADLINE_S, 0.05)
        print(f"\n[orphans] {len(descendants)} engine processes gone {time.monotonic() - killed:.2f} s after "
              f"the API process's SIGKILL")
        assert gone, alive(descendants)
        assert "is gone; ending engine process" in srv.log_tail(20_000)
    finally:
        srv.stop(signal.SIGKILL)

"""A model that fails to load ends the server: real servers that must fail to start.

(That a server's engine processes go with it when its API process is SIGKILLed is tested at the end of
test_model_modes.py, on that module's server once it has done its work: a server start saved.)"""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import ServerProcess

LOAD_FAILURE_DEADLINE_S = 120
MODEL_LOAD_EXIT_CODE = 78


def _fails_to_start(tmp_path, model: str) -> tuple[int, float, str]:
    srv = ServerProcess(["--model", str(model)], env={"HF_HUB_OFFLINE": "1"})
    started = time.monotonic()
    try:
        rc = srv.proc.wait(LOAD_FAILURE_DEADLINE_S)
    finally:
        srv.stop(signal.SIGKILL)
    return rc, time.monotonic() - started, srv.log_tail(50_000)


@pytest.mark.parametrize("case", ["missing", "broken_config"])
def test_a_model_that_fails_to_load_ends_the_server_with_the_reason(tmp_path, case):
    if case == "missing":
        model = tmp_path / "no-such-model"
        cause = f"the model directory {model} does not exist"
    else:
        model = tmp_path / "broken"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short
        cause = "config.json' is not a valid JSON file"
    rc, took, log = _fails_to_start(tmp_path, model)
    reason = next((line for line in log.splitlines() if "the model failed to load" in line), None)
    print(f"\n[load failure/{case}] exit code {rc} after {took:.1f} s: {reason}")
    assert rc == MODEL_LOAD_EXIT_CODE
    assert reason is not None and cause in reason
    assert "Traceback" not in log.split(reason)[1]  # nothing after the reason but the shutdown

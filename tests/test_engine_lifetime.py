"""A server's engine processes go with it, whatever ends it; a model that fails to load ends the server.

Starts real servers: one whose API process is SIGKILLed (its EngineCore and worker must follow), and a few that
must fail to start."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.conftest import ServerProcess
from tests.probes import alive, wait_until

ORPHAN_DEADLINE_S = 5
LOAD_FAILURE_DEADLINE_S = 120
MODEL_LOAD_EXIT_CODE = 78


def test_sigkill_of_the_api_process_takes_the_engine_with_it(tiny_model):
    srv = ServerProcess([]).wait_ready()
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

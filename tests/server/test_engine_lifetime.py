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


CASES = {
    "missing": lambda root: root / "no-such-model",
    "broken_config": lambda root: _broken(root / "broken"),
}


def _broken(model):
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short
    return model


@pytest.fixture(scope="module")
def failed_starts(tmp_path_factory) -> dict[str, tuple[str, int, float, str]]:
    """Both cases' servers, started together (their start-ups overlap): case -> (model, exit code, seconds, log)."""
    root = tmp_path_factory.mktemp("models")
    models = {case: make(root) for case, make in CASES.items()}
    servers = {case: ServerProcess(["--model", str(model)], env={"HF_HUB_OFFLINE": "1"}) for case, model in models.items()}
    started = time.monotonic()
    results = {}
    try:
        for case, srv in servers.items():
            rc = srv.proc.wait(LOAD_FAILURE_DEADLINE_S)
            results[case] = (str(models[case]), rc, time.monotonic() - started, None)
    finally:
        for srv in servers.values():
            srv.stop(signal.SIGKILL)
    return {case: (model, rc, took, servers[case].log_tail(50_000)) for case, (model, rc, took, _) in results.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_that_fails_to_load_ends_the_server_with_the_reason(failed_starts, case):
    model, rc, took, log = failed_starts[case]
    cause = (f"the model directory {model} does not exist" if case == "missing"
             else "config.json' is not a valid JSON file")
    reason = next((line for line in log.splitlines() if "the model failed to load" in line), None)
    print(f"\n[load failure/{case}] exit code {rc} after {took:.1f} s: {reason}")
    assert rc == MODEL_LOAD_EXIT_CODE
    assert reason is not None and cause in reason
    assert "Traceback" not in log.split(reason)[1]  # nothing after the reason but the shutdown

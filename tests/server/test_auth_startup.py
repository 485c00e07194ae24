"""Auth fails closed at the process: a real `llamaserve serve` given empty keys exits before loading anything."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_process_exits_non_zero_with_the_reason_before_loading_anything():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMASERVE_")}
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "1"], cwd=ROOT, capture_output=True, text=True,
        env={**env, "LLAMASERVE_API_KEYS": " "}, timeout=120,
    )
    assert run.returncode == 1
    assert "API keys were configured but none is set" in run.stderr and "Traceback" not in run.stderr

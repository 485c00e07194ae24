"""The command line's own commands that start no server (server/cli.py)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_keygen_prints_fresh_32_character_keys():
    run = [sys.executable, "-m", "server.cli", "keygen"]
    keys = {subprocess.run(run, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
            for _ in range(2)}
    assert len(keys) == 2 and all(re.fullmatch(r"[A-Za-z0-9]{32}", k) for k in keys)

"""The test tiers' plumbing: which runs start the preloaded server helper (tests/conftest.py), and what
`scripts/dev test fast` runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, _reaches_the_server_tier


def _config(args: list[str], source=pytest.Config.ArgsSource.ARGS, cwd: Path = ROOT) -> SimpleNamespace:
    return SimpleNamespace(args=args, args_source=source, rootpath=ROOT,
                           invocation_params=SimpleNamespace(dir=cwd))


@pytest.mark.parametrize(("args", "cwd", "reaches"), [
    (["tests/unit", "tests/app"], ROOT, False),
    (["tests/unit/test_schemas.py::test_prompt_forms", "tests/deploy"], ROOT, False),
    (["tests/server/test_metrics.py::test_unknown_routes_share_one_label"], ROOT, True),
    (["tests/server"], ROOT, True),
    (["tests"], ROOT, True),
    (["."], ROOT, True),
    (["server/test_limits.py"], ROOT / "tests", True),
    (["unit"], ROOT / "tests", False),
])
def test_the_server_helper_starts_only_for_runs_that_reach_the_server_tier(args, cwd, reaches):
    assert _reaches_the_server_tier(_config(args, cwd=cwd)) is reaches


def test_the_configured_testpaths_reach_the_server_tier_from_any_directory(tmp_path):
    testpaths = ["tests/unit", "tests/app", "tests/engine", "tests/server", "tests/deploy"]
    assert _reaches_the_server_tier(_config(testpaths, pytest.Config.ArgsSource.TESTPATHS, cwd=tmp_path))


def test_dev_test_fast_runs_the_unit_and_app_tiers_with_the_callers_arguments(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # A stand-in interpreter that prints what it was asked to run; the stamp says the install is current.
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$@"\n')
    python.chmod(0o755)
    stamp = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (venv / f".installed-cpu,test-{stamp}").touch()
    env = {**os.environ, "LLAMASERVE_VENV": str(venv), "LLAMASERVE_ENGINE": "cpu"}
    run = subprocess.run([str(ROOT / "scripts" / "dev"), "test", "fast", "-x", "-q"], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert run.stdout.split() == ["-m", "pytest", "tests/unit", "tests/app", "-x", "-q"]

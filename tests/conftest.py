"""Test fixtures: real llamaserve processes on the real vLLM engine, serving the built tiny model."""

from __future__ import annotations

import atexit
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.preloaded import Helper, die_with_parent, own_process_group

# The test process starts in-process engines: torch on one thread keeps forking their processes safe
# (engine/processes.py). Read by OpenMP when torch loads, so it must be set before any test imports torch; the
# servers the tests start do not inherit it (they set their own, as `llamaserve serve` does).
_OMP_SET_HERE = "OMP_NUM_THREADS" not in os.environ
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("LLAMASERVE_TEST_CACHE", ROOT / ".cache"))
READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every server process group still alive; the session's end kills what is left (see pytest_sessionfinish).
_LIVE_GROUPS: set[int] = set()
def _die_with_the_test_run() -> None:
    """In the child before exec: its own process group (tests.preloaded.own_process_group), and on Linux a SIGKILL
    when the test run dies, even by SIGKILL or os._exit (pytest-timeout's thread method)."""
    own_process_group()
    if sys.platform == "linux":
        die_with_parent()


def kill_group(pgid: int, timeout: float = 30) -> bool:
    """SIGKILLs every process of the group; True once none is left (zombies of ours are reaped by the caller)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        _LIVE_GROUPS.discard(pgid)
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_members(pgid):
            _LIVE_GROUPS.discard(pgid)
            return True
        time.sleep(0.05)
    return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc (elsewhere: whether any process is left)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


# vLLM's CPU worker binds its OpenMP threads to the cores it picks, the same ones for every server ("auto": here
# core 0, the other one kept for the API process). Servers that start or run together would all compute on that
# one core; each server gets the next core in turn instead, unless the caller chose.
_NEXT_CORE = itertools.cycle(range(os.cpu_count() or 1))


def _caller_env() -> dict[str, str]:
    env = dict(os.environ)
    if _OMP_SET_HERE:
        env.pop("OMP_NUM_THREADS", None)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(next(_NEXT_CORE)))
    return env


# Settings every test server starts with, as a JSON object (e.g. another model directory and
# {"engine_args": {"load_format": "dummy"}}: scripts/gpu-check). Given to the servers as LLAMASERVE_* variables, so a
# test's own flags still win; in-process tests never see them.
SERVER_SETTINGS_VAR = "LLAMASERVE_TEST_SERVER_SETTINGS"


def server_settings_env(settings_json: str | None) -> dict[str, str]:
    settings = json.loads(settings_json) if settings_json else {}
    return {f"LLAMASERVE_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in settings.items()}


# Variables that a library reads only while it is imported: a server given one of them must be a fresh process,
# not a fork of the preloaded helper (tests/preloaded.py), which imported those libraries under the run's own.
_READ_AT_IMPORT = ("HF_", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING",
                   "PYTHON", "LD_")


class _Preloaded:
    """The one preloaded helper of this run, started by the first server that can be forked."""

    def __init__(self):
        self.helper = None

    def usable(self, overrides: dict[str, str]) -> bool:
        return (os.environ.get("LLAMASERVE_TEST_PRELOAD", "1") != "0" and sys.platform == "linux"
                # PR_SET_PDEATHSIG binds the helper to the thread that starts it: only the main thread lives as
                # long as the run.
                and (self.helper is not None or threading.current_thread() is threading.main_thread())
                and not any(key.startswith(_READ_AT_IMPORT) for key in overrides))

    def get(self):
        if self.helper is None:
            env = dict(os.environ)
            if _OMP_SET_HERE:
                env.pop("OMP_NUM_THREADS", None)
            log = Path(tempfile.mkstemp(prefix="llamaserve-test-preloaded-", suffix=".log")[1])
            self.helper = Helper(ROOT, log, env)
        return self.helper

    def close(self) -> None:
        if self.helper is not None:
            self.helper.close()
            self.helper = None


_PRELOADED = _Preloaded()


class ServerProcess:
    """A `llamaserve serve` process on a loopback port, in its own process group: `stop()` ends the whole group (API
    process, EngineCore, workers), and the session's end kills any group a test left behind. It is a fork of the
    preloaded helper (tests/preloaded.py) running the real entry point, unless `command` is given, `env` sets a
    variable read at import time, or LLAMASERVE_TEST_PRELOAD=0: then a fresh child process."""

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None,
                 command: list[str] | None = None, allow_unauthenticated: bool = True):
        self.port = free_port()
        # Servers without keys must say so; with keys the flag changes nothing (server/protection/security.py).
        consent = ["--allow-unauthenticated"] if allow_unauthenticated else []
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="llamaserve-test-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        argv = ["serve", "--host", "127.0.0.1", "--port", str(self.port), *consent, *(args or [])]
        # No warm-up (a second or two of CPU per start) but on the shared server, which tests it (test_warm_up).
        full_env = {**_caller_env(), "LLAMASERVE_MODEL_CACHE_DIR": str(CACHE_DIR), "LLAMASERVE_WARM_UP": "false",
                    **server_settings_env(os.environ.get(SERVER_SETTINGS_VAR)), **(env or {})}
        if command is None and _PRELOADED.usable(env or {}):
            self.proc = _PRELOADED.get().spawn(argv, full_env, ROOT, self.log_path)
        else:
            self.proc = subprocess.Popen(
                command or [sys.executable, "-m", "server.cli", *argv], cwd=ROOT, env=full_env,
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_the_test_run)
        self.pgid = self.proc.pid  # own_process_group made it the group's leader
        _LIVE_GROUPS.add(self.pgid)

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
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """`sig` to the API process (SIGTERM: a graceful drain, up to `timeout`), then SIGKILL to whatever is left
        of its group. Returns the API process's exit code."""
        if self.proc.poll() is None and sig != signal.SIGKILL:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        gone = kill_group(self.pgid)
        self.proc.wait(10)
        self._log.close()
        assert gone, f"processes of server group {self.pgid} survived SIGKILL: {group_members(self.pgid)}"
        return self.proc.returncode


    def stop_in_background(self) -> None:
        """`stop()` without waiting for it: a module's teardown need not wait the second or more that vLLM takes to
        end its engine, while the next module's tests run. The session's end waits for every such stop and fails
        the run if one failed."""
        def stop() -> None:
            try:
                self.stop()
            except Exception as exc:  # noqa: BLE001 - reported at the session's end
                _FAILED_STOPS.append(f"server group {self.pgid}: {exc!r}")

        thread = threading.Thread(target=stop, name=f"stop-{self.pgid}", daemon=True)
        _STOPPING.append(thread)
        thread.start()


_STOPPING: list[threading.Thread] = []
_FAILED_STOPS: list[str] = []


SERVER_TIER = ROOT / "tests" / "server"


def _reaches_the_server_tier(config) -> bool:
    """Whether the paths this run was given (or the configured testpaths) hold server-tier tests: only those start
    servers, so a run of the cheaper tiers leaves both cores to its tests."""
    base = config.rootpath if config.args_source == pytest.Config.ArgsSource.TESTPATHS else config.invocation_params.dir
    paths = [Path(base, arg.split("::")[0]).resolve() for arg in config.args]
    return any(path == SERVER_TIER or SERVER_TIER in path.parents or path in SERVER_TIER.parents for path in paths)


def pytest_sessionstart(session):
    """The preloaded helper imports (~10 s of one core) while pytest collects the tests on the other."""
    if not session.config.option.collectonly and _reaches_the_server_tier(session.config) and _PRELOADED.usable({}):
        _PRELOADED.get()


def pytest_sessionfinish(session, exitstatus):
    """The safety net: whatever way the run ends (failure, Ctrl-C, a fixture that never got to stop its server),
    no server group outlives it."""
    launches = sys.modules.get("tests.launches")
    if launches is not None:
        launches.stop_untaken()
    while _STOPPING:
        _STOPPING.pop().join(90)
    if _FAILED_STOPS and session is not None:
        print("\nservers that did not stop cleanly:\n  " + "\n  ".join(_FAILED_STOPS), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for pgid in list(_LIVE_GROUPS):
        kill_group(pgid)
    _PRELOADED.close()


atexit.register(pytest_sessionfinish, None, None)


@pytest.fixture()
def clean_env(monkeypatch):
    """No LLAMASERVE_* (nor OpenTelemetry's OTEL_*) variables from the caller's shell, so settings come only from
    what the test gives."""
    from server.settings import ENV_PREFIX

    for key in list(os.environ):
        if key.startswith((ENV_PREFIX, "OTEL_")):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model(CACHE_DIR)


@pytest.fixture(scope="session")
def server(request):
    """The shared server with default settings (no keys, default limits)."""
    from tests.launches import take

    srv = take("server", request)
    yield srv
    srv.stop()


def _launch_shared_server(tiny_model: Path, tmp_path_factory) -> ServerProcess:
    return ServerProcess(["--rate-limit-rpm", "0", "--rate-limit-tpm", "0", "--warm-up"])


def pytest_configure(config):
    from tests.launches import WITH_THE_SHARED_SERVER, planned

    planned("server", group=WITH_THE_SHARED_SERVER)(_launch_shared_server)


@pytest.fixture(scope="session")
def client(server: ServerProcess):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c

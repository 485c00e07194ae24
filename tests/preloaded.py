"""Test servers forked from one process that has already imported the server.

Most of a server's start on these 2-core machines is its API process importing torch, transformers and vLLM (about
7 s of CPU, the same for every server the suite starts). One helper process (`python -m tests.preloaded`, started
once per test run) imports all that once; each test server is then a fork of it that runs the real entry point,
`server.cli.main(["serve", ...])`, in its own process group, with its own environment, working directory and log, as
`llamaserve serve` would. The engine's processes are forked from that server as always (engine/processes.py).

What a fork cannot give a server is an environment variable that a library reads only while it is imported (the
Hugging Face hub's HF_HUB_OFFLINE, say): a test that sets one starts its server as a fresh process instead, and so
does any test whose server is not `llamaserve serve` (see ServerProcess). LLAMASERVE_TEST_PRELOAD=0 turns forking
off for the whole run.

Protocol, one JSON object a line: the test run writes {"argv", "env", "cwd", "log"} to the helper's stdin and reads
{"pid"} back on the helper's report pipe; {"exited": pid, "code": rc} follows there whenever a server ends (rc as
subprocess reports it: negative for a signal). The helper dies with the test run (PR_SET_PDEATHSIG) and its
servers with it; each server is the leader of its own process group, which conftest's clean-up kills.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from bench.processes import die_with_parent

# Everything a server imports before it is ready, as far as a fork can share it: the API process's imports and
# those of the engine's processes, which are forked from it.
PRELOAD = (
    "server.cli", "server.app", "uvicorn", "uvloop", "httptools",
    "vllm.v1.engine.async_llm", "vllm.v1.engine.core", "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.cpu_worker", "vllm.v1.worker.cpu_model_runner", "vllm.model_executor.models.llama",
)
ENTRY = "server.cli:main"  # what a fork runs, given the order's argv


def own_process_group() -> None:
    """Its own process group (one killpg ends the server, its engine and the engine's workers), in the caller's
    session. Not a session of its own (setsid): Linux schedules each session as one "autogroup" (on by default), and
    while a server decodes, vLLM's EngineCore spins on sched_yield beside its busy worker; with the server in a
    session of its own, the test run's processes then got no CPU for up to 40 s at a time (a 5 ms loop in the test
    process took 27-41 s in 3 runs of 4 here; with autogroups off, 27 ms at worst)."""
    os.setpgid(0, 0)


# --- the helper process ------------------------------------------------------------------------------------------

def _run_server(order: dict, report_fd: int) -> None:
    """In the forked child: become `llamaserve serve` as the order says; never returns."""
    code = 1
    try:
        own_process_group()
        die_with_parent()
        os.close(report_fd)
        log = os.open(order["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        os.chdir(order["cwd"])
        # The command line `ps` shows, and set up before the environment changes: setproctitle finds the memory
        # it may write over (argv and, after it, environ) on first use, and vLLM names its processes with it.
        import setproctitle

        sys.argv = ["llamaserve", *order["argv"]]
        setproctitle.setproctitle(" ".join(sys.argv))
        os.environ.clear()
        os.environ.update(order["env"])
        module, function = order["entry"].split(":")
        getattr(importlib.import_module(module), function)(order["argv"])
        code = 0
    except SystemExit as exc:  # what the interpreter would make of it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported in the server's log, as an uncaught exception would be
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _helper_main(report_fd: int, preload: tuple[str, ...]) -> None:
    die_with_parent()
    for name in preload:
        importlib.import_module(name)
    if preload:
        from engine.processes import single_threaded_torch

        single_threaded_torch()  # as `llamaserve serve` does first: the forks' own engine forks stay safe
    # A fork copies only the forking thread: a lock another Python thread held would stay held in every server.
    # (The native threads that are there, OpenBLAS's idle pools, re-make themselves after a fork; `llamaserve serve`
    # forks its engine with them too.)
    if threading.active_count() != 1:
        print(f"tests.preloaded: Python threads {threading.enumerate()} after the imports; forking is unsafe",
              file=sys.stderr)
        sys.exit(1)

    def report(message: dict) -> None:
        os.write(report_fd, (json.dumps(message) + "\n").encode())

    report({"ready": True})
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.1)
        while True:  # reap every server that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            report({"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the test run closed its end: done
            os._exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            order = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_server(order, report_fd)
            report({"pid": pid})


# --- the test run's side -----------------------------------------------------------------------------------------

def _await_own_group(pid: int, timeout: float = 10) -> None:
    """Until the fork has its own process group: before that, killing its process group would miss it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.getpgid(pid) == pid:
                return
        except ProcessLookupError:  # already gone (and reaped): nothing of it to kill
            return
        time.sleep(0.002)
    raise RuntimeError(f"tests.preloaded: server {pid} did not start its own process group")


class ForkedServer:
    """The part of subprocess.Popen that the tests use, for a server the helper forked."""

    def __init__(self, pid: int, helper: Helper):
        self.pid = pid
        self.returncode: int | None = None
        self._helper = helper

    def poll(self) -> int | None:
        self._helper.wait_exit(self, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._helper.wait_exit(self, timeout):
            raise subprocess.TimeoutExpired(f"server {self.pid}", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Helper:
    """The helper process, started on first use; `spawn` forks a server from it."""

    def __init__(self, root: Path, log_path: Path, env: dict[str, str], preload: tuple[str, ...] = PRELOAD):
        report_r, report_w = os.pipe()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.preloaded", str(report_w), ",".join(preload)], cwd=root, env=env,
            stdin=subprocess.PIPE,
            stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(report_w,))
        os.close(report_w)
        self._reports = os.fdopen(report_r, "rb")
        self._lock = threading.Lock()  # one order at a time: the next pid reported is that order's
        self._changed = threading.Condition()
        self._pids: list[int] = []
        self._exits: dict[int, int] = {}
        self._ready = False
        self._gone = False
        threading.Thread(target=self._read_reports, name="preloaded-reports", daemon=True).start()

    def _read_reports(self) -> None:
        for line in self._reports:
            message = json.loads(line)
            with self._changed:
                if "ready" in message:
                    self._ready = True
                elif "pid" in message:
                    self._pids.append(message["pid"])
                else:
                    self._exits[message["exited"]] = message["code"]
                self._changed.notify_all()
        with self._changed:
            self._gone = True
            self._changed.notify_all()

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path, entry: str = ENTRY) -> ForkedServer:
        with self._lock, self._changed:
            if not self._changed.wait_for(lambda: self._ready or self._gone, 300) or self._gone:
                raise RuntimeError(f"tests.preloaded: the helper did not start; see {self.log_path}")
            order = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log), "entry": entry}
            self._proc.stdin.write((json.dumps(order) + "\n").encode())
            self._proc.stdin.flush()
            if not self._changed.wait_for(lambda: self._pids or self._gone, 60) or not self._pids:
                raise RuntimeError("tests.preloaded: the helper did not fork")
            server = ForkedServer(self._pids.pop(0), self)
        _await_own_group(server.pid)
        return server

    def wait_exit(self, server: ForkedServer, timeout: float | None) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: server.pid in self._exits or self._gone, timeout)
            if server.pid in self._exits:
                server.returncode = self._exits[server.pid]
            elif self._gone:  # its parent is gone, so it was SIGKILLed (PR_SET_PDEATHSIG)
                server.returncode = -signal.SIGKILL
            return server.returncode is not None

    def close(self) -> None:
        """Ends the helper: its servers, if any are left, die with it."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._log.close()


if __name__ == "__main__":
    _helper_main(int(sys.argv[1]), tuple(filter(None, sys.argv[2].split(","))))

"""No process outlives what started it: the test suite's servers die with their group and with the test run
(tests/conftest.py). No engine is started here (one test looks at the shared server's registration); engine
processes dying with their parent: tests/unit/test_lifeline.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests import conftest, launches
from tests.conftest import ROOT, ServerProcess, _LIVE_GROUPS, group_members, pytest_sessionfinish
from tests.preloaded import Helper
from tests.probes import wait_until
from tests.unit.test_lifeline import _alive


# A stand-in server: its grandchild ignores SIGTERM and does not die with its parent, like an unguarded EngineCore.
_IGNORES_SIGTERM = [sys.executable, "-c",
                    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
_STUBBORN = [sys.executable, "-c", textwrap.dedent(f"""
    import subprocess, time
    subprocess.Popen({_IGNORES_SIGTERM!r})
    time.sleep(600)
""")]


def _members_appear(srv: ServerProcess) -> bool:
    return wait_until(lambda: len(group_members(srv.pgid)) >= 2, 10, 0.05)


def test_a_server_crash_leaves_nothing_once_stopped():
    srv = ServerProcess(command=_STUBBORN)
    assert _members_appear(srv)
    assert os.getpgid(srv.proc.pid) == srv.pgid != os.getpgid(0)  # its own group, not the test run's
    assert os.getsid(srv.proc.pid) == os.getsid(0)  # but the run's session (tests.preloaded.own_process_group)
    os.kill(srv.proc.pid, signal.SIGKILL)  # the way a crash (or the OOM killer) ends it
    srv.proc.wait(10)
    assert group_members(srv.pgid)  # the grandchild lives on...
    srv.stop()
    assert group_members(srv.pgid) == [] and srv.pgid not in _LIVE_GROUPS  # ...until the group is killed


def test_stop_after_sigterm_kills_what_ignores_it():
    srv = ServerProcess(command=_STUBBORN)
    assert _members_appear(srv)
    srv.stop(timeout=1)
    assert group_members(srv.pgid) == []


def test_the_session_end_kills_every_group_a_test_left_behind(monkeypatch):
    srv = ServerProcess(command=_STUBBORN)
    assert _members_appear(srv)
    # Only this test's group: the session's servers launched ahead for later modules (tests/launches.py) live on.
    monkeypatch.setattr(conftest, "_LIVE_GROUPS", {srv.pgid})
    monkeypatch.setattr(launches, "_LAUNCHED", {})
    monkeypatch.setattr(conftest, "_PRELOADED", conftest._Preloaded())  # the session's forked servers live on
    pytest_sessionfinish(None, None)  # what pytest (or atexit) runs when the session ends, however it ends
    assert group_members(srv.pgid) == []
    srv.proc.wait(10)


def _a_killed_run_takes_its_server(tmp_path, start_server: str) -> None:
    """Runs a script that does `start_server` (which sets `pgid`), SIGKILLs it once the stand-in server and its
    grandchild are up, and checks that the server died with it."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
    """) + textwrap.dedent(start_server) + "print(pgid, flush=True)\ntime.sleep(600)\n")
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    pgid = None
    try:
        pgid = int(run.stdout.readline())
        assert wait_until(lambda: len(group_members(pgid)) >= 2, 10, 0.05)
        run.kill()
        run.wait(10)
        # The server dies with the run (PDEATHSIG); a real server's engine then dies with it (lifeline).
        assert wait_until(lambda: not _alive(pgid), 3, 0.05)
    finally:
        for group in (run.pid, pgid):  # what the run left if it was not killed; the stand-in's grandchild
            if group is not None and group_members(group):
                os.killpg(group, signal.SIGKILL)


def test_servers_die_when_the_test_run_is_killed(tmp_path):
    """Even a SIGKILLed test run (or pytest-timeout's os._exit) leaves no server behind."""
    _a_killed_run_takes_its_server(tmp_path, f"""
        from tests.conftest import ServerProcess
        pgid = ServerProcess(command={_STUBBORN!r}).pgid
    """)


def test_the_session_end_knows_the_shared_server_and_the_modules_servers_alike(server, request):
    # The conftest pytest loaded and the test modules' `tests.conftest` are one module (tests/ is a package): one
    # registry of live groups.
    loaded = [plugin for plugin in request.config.pluginmanager.get_plugins()
              if getattr(plugin, "__file__", None) == conftest.__file__]
    assert loaded == [conftest]
    assert server.pgid in conftest._LIVE_GROUPS


# Forked test servers (tests/preloaded.py): the helper forks stand-ins here, without preloading anything.

def stubborn_server(argv: list[str]) -> None:
    """A forked stand-in server, like _STUBBORN."""
    subprocess.Popen(_IGNORES_SIGTERM)
    time.sleep(600)


def exit_with(argv: list[str]) -> None:
    sys.exit(int(argv[0]))


def _bare_helper(tmp_path) -> Helper:
    return Helper(ROOT, tmp_path / "helper.log", dict(os.environ), preload=())


def test_a_forked_server_leads_its_own_group_in_the_runs_session_and_its_exit_is_reported(tmp_path):
    helper = _bare_helper(tmp_path)
    try:
        srv = helper.spawn([], dict(os.environ), ROOT, tmp_path / "srv.log", entry="tests.server.test_process_hygiene:stubborn_server")
        assert os.getpgid(srv.pid) == srv.pid  # killing its group reaches all of it
        assert os.getsid(srv.pid) == os.getsid(0)  # one scheduler autogroup with the run (own_process_group)
        assert wait_until(lambda: len(group_members(srv.pid)) >= 2, 10, 0.05)
        assert srv.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            srv.wait(0.2)
        os.killpg(srv.pid, signal.SIGKILL)
        assert srv.wait(10) == -signal.SIGKILL
        exits = helper.spawn(["3"], dict(os.environ), ROOT, tmp_path / "exit.log", entry="tests.server.test_process_hygiene:exit_with")
        assert exits.wait(30) == 3
    finally:
        helper.close()


def test_forked_servers_die_when_the_test_run_is_killed(tmp_path):
    # The run's death kills the helper, the helper's kills the server (PDEATHSIG, both).
    _a_killed_run_takes_its_server(tmp_path, f"""
        from tests.preloaded import Helper
        helper = Helper(Path({str(ROOT)!r}), Path({str(tmp_path / "helper.log")!r}), dict(os.environ), preload=())
        pgid = helper.spawn([], dict(os.environ), Path({str(ROOT)!r}), Path({str(tmp_path / "srv.log")!r}),
                            entry="tests.server.test_process_hygiene:stubborn_server").pid
    """)


def test_a_stop_in_background_returns_at_once_and_ends_the_group(monkeypatch):
    srv = ServerProcess(command=_STUBBORN)
    assert _members_appear(srv)
    monkeypatch.setattr(conftest, "_STOPPING", [])
    started = time.monotonic()
    srv.stop_in_background()
    assert time.monotonic() - started < 0.5
    [stopping] = conftest._STOPPING  # what the session's end waits for
    stopping.join(30)
    assert group_members(srv.pgid) == [] and srv.proc.returncode is not None

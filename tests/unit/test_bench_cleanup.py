"""A benchmark that is stopped (SIGTERM) or killed (SIGKILL) leaves none of its servers running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.probes import wait_until

# What bench.run.main does around its servers, with a sleeper for a server.
BENCH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench import run
    run.stop_servers_on_sigterm()
    srv = run.Server("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"], {}, 0, Path(sys.argv[1]))
    try:
        print(srv.proc.pid, flush=True)
        time.sleep(300)
    finally:
        srv.stop()
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_or_killed_bench_takes_its_servers_with_it(sig, tmp_path):
    bench = subprocess.Popen([sys.executable, "-c", BENCH, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        server = int(bench.stdout.readline())
        assert not _gone(server)
        # its own group for one killpg, in the bench's session (tests.preloaded.own_process_group says why)
        assert os.getpgid(server) == server and os.getsid(server) == os.getsid(bench.pid)
        bench.send_signal(sig)
        assert bench.wait(10) == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert wait_until(lambda: _gone(server), 5), "the bench's server outlived it"
    finally:
        bench.kill()
        bench.wait()
        try:
            psutil.Process(server).kill()
        except (psutil.NoSuchProcess, NameError, UnboundLocalError):
            pass

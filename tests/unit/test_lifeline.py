"""Engine processes die with their parent (engine/lifeline.py), shown on stand-in children: no engine is started.
The suite's own servers and their groups: tests/server/test_process_hygiene.py."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests.conftest import ROOT
from tests.probes import wait_until


# A parent that starts, the way vLLM does (multiprocessing, spawn), a child guarded by engine/lifeline.py and an
# unguarded one, prints both pids, then waits to be killed.
_PARENT = textwrap.dedent("""
    import multiprocessing, pathlib, sys, time
    from engine import lifeline

    def guarded(ready):
        lifeline.die_with_parent()
        pathlib.Path(ready).touch()
        time.sleep(600)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        kids = [ctx.Process(target=guarded, args=(sys.argv[2],)), ctx.Process(target=time.sleep, args=(600,))]
        for k in kids:
            k.start()
        print(*(k.pid for k in kids), flush=True)
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sigkill_parent_of_a_guarded_child(method: str, tmp_path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    ready = tmp_path / "guarded-ready"
    parent = subprocess.Popen([sys.executable, str(script), method, str(ready)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, process_group=0)
    try:
        guarded, unguarded = map(int, parent.stdout.readline().split())
        assert _alive(guarded) and _alive(unguarded)
        # A spawned child takes a while to import on a loaded machine: kill the parent once the guard is on.
        assert wait_until(ready.exists, 60, 0.05), "the guarded child never started its guard"
        parent.kill()
        parent.wait(10)
        killed = time.monotonic()
        assert wait_until(lambda: not _alive(guarded), 3, 0.02), "the guarded child outlived its parent"
        print(f"\n[lifeline/{method}] guarded child gone {time.monotonic() - killed:.2f} s after its parent's SIGKILL")
        # Without the guard a child lives on: the reason engine/lifeline.py exists.
        assert _alive(unguarded)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)


def test_a_guarded_spawn_child_dies_with_its_parent(tmp_path):
    _sigkill_parent_of_a_guarded_child("spawn", tmp_path)


def test_a_guarded_fork_child_dies_with_its_parent(tmp_path):
    _sigkill_parent_of_a_guarded_child("fork", tmp_path)


def test_install_wraps_vllms_process_targets_by_reference():
    from vllm.v1.engine.core import EngineCoreProc
    from vllm.v1.executor.multiproc_executor import WorkerProc

    from engine import lifeline

    # An engine started earlier in this test process has installed the guard already.
    original = getattr(EngineCoreProc, "_llamaserve_unguarded_run_engine_core", EngineCoreProc.run_engine_core)
    lifeline.install()
    lifeline.install()  # idempotent: no wrapper around a wrapper
    for cls, attr in ((EngineCoreProc, "run_engine_core"), (WorkerProc, "worker_main")):
        target = getattr(cls, attr)
        assert isinstance(target, functools.partial) and target.func is lifeline.run_guarded
        # What spawn sends the child: a reference to our function and three names, not vLLM's function.
        clone = pickle.loads(pickle.dumps(target))
        assert clone.func is lifeline.run_guarded and clone.args == target.args
    assert getattr(EngineCoreProc, "_llamaserve_unguarded_run_engine_core") is original

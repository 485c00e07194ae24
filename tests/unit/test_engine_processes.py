"""How the engine's processes start (engine/processes.py): the start method, the sockets a fork forgets, the heap it
freezes. On the real server: tests/server/test_engine_processes.py."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from engine.processes import apply, resolve
from tests.conftest import ROOT


@pytest.mark.parametrize(("requested", "is_cpu", "threads", "expected"), [
    ("auto", True, 1, "fork"),
    ("auto", True, 2, None),  # an OpenMP pool may be running here: a forked worker would hang
    ("auto", False, 1, None),  # GPU platforms: vLLM's own choice
    ("spawn", True, 1, "spawn"),
    ("fork", False, 8, "fork"),
])
def test_the_start_method(requested, is_cpu, threads, expected):
    assert resolve(requested, is_cpu=is_cpu, torch_threads=threads) == expected


def test_a_method_asked_for_is_put_in_force_for_vllm(monkeypatch):
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    assert apply("spawn") == "spawn" and os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert apply("fork") == "fork" and os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"


_FORGETS = """
import os, socket, sys
from engine.processes import forget_inherited_sockets
tcp = socket.create_server(("127.0.0.1", 0))
unix_a, unix_b = socket.socketpair()
read_end, write_end = os.pipe()
forget_inherited_sockets()
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
print(is_open(tcp.fileno()), is_open(unix_a.fileno()), is_open(read_end))
"""


def test_forgetting_inherited_sockets_closes_tcp_and_keeps_the_rest():
    out = subprocess.run([sys.executable, "-c", _FORGETS], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr


def test_only_a_fork_start_freezes_the_heap_the_engine_processes_inherit():
    import gc

    from engine import processes

    before = gc.get_freeze_count()
    try:
        for method in ("spawn", "forkserver", None):
            processes.share_heap_with_forks(method)
            assert gc.get_freeze_count() == before
        processes.share_heap_with_forks("fork")
        assert gc.get_freeze_count() > before  # vLLM's collections in the forked processes skip these objects
    finally:
        gc.unfreeze()


def test_an_engine_process_that_exits_during_vllms_forced_kill_is_no_shutdown_error():
    from concurrent.futures import ThreadPoolExecutor

    from engine.core import LlamaEngine

    class VllmRacingItsKill:
        def shutdown(self, timeout):
            raise psutil.NoSuchProcess(4321)  # what vLLM's kill_process_tree lets out when a child exits first

    engine = object.__new__(LlamaEngine)
    engine._tokenize_pool = ThreadPoolExecutor(1)
    engine._llm = VllmRacingItsKill()
    engine.shutdown()  # no exception: the app's shutdown completes (no "Application shutdown failed")
    assert engine._tokenize_pool._shutdown

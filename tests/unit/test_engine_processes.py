"""How the engine's processes start (engine/processes.py): forked on CPU hosts, and holding none of the API
process's sockets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.processes import apply, resolve
from tests.conftest import ROOT, ServerProcess


@pytest.mark.parametrize(("requested", "is_cpu", "threads", "expected"), [
    ("auto", True, 1, "fork"),
    ("auto", True, 2, None),  # an OpenMP pool may be running here: a forked worker would hang
    ("auto", False, 1, None),  # GPU platforms: vLLM's own choice
    ("spawn", True, 1, "spawn"),
    ("fork", False, 8, "fork"),
])
def test_the_start_method(requested, is_cpu, threads, expected):
    assert resolve(requested, is_cpu=is_cpu, torch_threads=threads) == expected


def _engine_processes(srv: ServerProcess) -> list[psutil.Process]:
    """EngineCore and its workers (not multiprocessing's resource tracker, a helper it always spawns)."""
    return [p for p in psutil.Process(srv.proc.pid).children(recursive=True) if p.name().startswith("VLLM::")]


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _maps_httptools(pid: int) -> bool:
    return "/httptools/" in Path(f"/proc/{pid}/maps").read_text()


def _tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            inodes.add(f"socket:[{line.split()[9]}]")
    return inodes


def test_the_engine_processes_are_forked_on_cpu_and_hold_none_of_the_api_processes_tcp_sockets(server):
    api = psutil.Process(server.proc.pid)
    engine = _engine_processes(server)
    assert {p.name() for p in engine} >= {"VLLM::EngineCore", "VLLM::Worker"}
    # A forked process holds what its parent had loaded: the HTTP parser only the API process imports. A spawned
    # one is a new Python that imports vLLM's engine and nothing of the web server.
    assert _maps_httptools(api.pid)
    for proc in engine:
        assert _maps_httptools(proc.pid), f"{proc.name()} was not forked"
    api_tcp = _socket_inodes(api.pid) & _tcp_inodes()
    assert api_tcp, "the API process holds its listening socket"
    for proc in engine:
        assert not _socket_inodes(proc.pid) & api_tcp, f"{proc.name()} holds the API process's TCP sockets"


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

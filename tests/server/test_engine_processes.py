"""How the engine's processes start on the shared real server: forked on this CPU host, and holding none of the
API process's TCP sockets. The start method's rules: tests/unit/test_engine_processes.py."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from tests.conftest import ServerProcess


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

"""How the engine's processes (vLLM's EngineCore, and its workers) are started.

vLLM's CPU platform always starts them by `spawn`: each is a fresh Python that imports torch and vLLM again, about
7-9 s apiece on a 2-core host, two of them one after the other, so most of a server's start-up is imports. A fork
copies the parent with everything imported: on the tiny model the engine then starts in ~4 s instead of ~20 s.

Fork has one hazard here: a process whose torch ran an OpenMP parallel region on more than one thread leaves
OpenMP's thread pool behind, and a forked child that uses OpenMP (the worker) then hangs for good. The processes
that start engines never need torch's intra-op threads (they run no model; building the tiny checkpoints is a few
small tensors), so on CPU hosts `single_threaded_torch()` keeps them at one, and "auto" forks only while that
holds; a process that started from anywhere else, or set more threads, gets vLLM's own choice. On GPU platforms
"auto" leaves vLLM's choice alone (it forks unless CUDA is already initialised).

A forked EngineCore inherits every descriptor of the API process, the HTTP listening socket and client connections
among them: the port would stay bound, and accept connections nobody answers, after the API process closed it.
`forget_inherited_sockets()` closes the inherited TCP sockets first thing in the child (engine/lifeline.py).
"""

from __future__ import annotations

import gc
import os
import socket
import stat
from typing import Literal

StartMethod = Literal["auto", "fork", "spawn"]
_ENV = "VLLM_WORKER_MULTIPROC_METHOD"  # read by vLLM each time it starts an engine process


def single_threaded_torch() -> None:
    """For a process that will start engines on a CPU host: torch computes on one thread here, so forking stays
    safe. Call it before anything in the process computes with torch. GPU hosts keep torch's threads (vLLM's API
    process may preprocess images with them) and vLLM's own start method."""
    import torch
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        torch.set_num_threads(1)


def resolve(requested: StartMethod, *, is_cpu: bool, torch_threads: int) -> str | None:
    """The start method to put in force, or None for vLLM's own choice."""
    if requested != "auto":
        return requested
    return "fork" if is_cpu and torch_threads == 1 else None


def apply(requested: StartMethod) -> str | None:
    """Puts the start method in force for the engine about to start (after vLLM's config is made: the CPU
    platform sets spawn while making it). Returns it, or None where vLLM chooses."""
    import torch
    from vllm.platforms import current_platform

    method = resolve(requested, is_cpu=current_platform.is_cpu(), torch_threads=torch.get_num_threads())
    if method is not None:
        os.environ[_ENV] = method
    return method


def share_heap_with_forks(method: str | None) -> None:
    """Before engine processes are forked: moves every object this process holds into the collector's permanent
    generation (gc.freeze). A forked EngineCore and worker start with all of torch's, transformers' and vLLM's
    objects, and vLLM's model loader runs two full collections over them (about 1 s each on a 2-core host);
    frozen, they are skipped, and no collection writes to (so copies) the pages the processes share."""
    if method == "fork":
        gc.freeze()


def forget_inherited_sockets() -> None:
    """Closes every TCP socket this process holds; called in a new engine process before it opens any of its own
    (a spawned one holds none)."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=fd)
        except OSError:
            continue
        if probe.family in (socket.AF_INET, socket.AF_INET6):
            probe.close()
        else:
            probe.detach()

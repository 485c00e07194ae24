"""Engine processes die with the process that started them, whatever killed it.

vLLM's EngineCore does not watch its parent: when the API process is SIGKILLed (or OOM-killed) it keeps running,
and so do its workers (which watch only the EngineCore), holding host memory and, on GPU hosts, the GPU's memory,
so that a restarted server cannot start. `install()` wraps the two process targets vLLM hands to multiprocessing
(EngineCoreProc.run_engine_core, started by the API process, and WorkerProc.worker_main, started by the EngineCore)
so that each child first starts a thread that waits on multiprocessing's parent sentinel (a pipe whose write end
only the parent holds: it reads EOF the moment the parent is gone) and then SIGKILLs its own process. The chain
follows: API gone -> EngineCore killed -> its workers killed. SIGKILL frees GPU memory as any exit does.

The wrapper is a `functools.partial` of a function of this module, so spawn's pickling sends it by reference and
the child imports it; the original target is looked up in the child (or, under fork, kept beside the wrapper).
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import Any

from engine import processes

_TARGETS = (
    ("vllm.v1.engine.core", "EngineCoreProc", "run_engine_core"),
    ("vllm.v1.executor.multiproc_executor", "WorkerProc", "worker_main"),
)
_UNGUARDED = "_llamaserve_unguarded_"
# Between two looks at the parent's pid, for a parent that did not start us through multiprocessing.
_POLL_S = 1.0


def install() -> None:
    """Makes every EngineCore and worker process started from now on die with its parent. Idempotent."""
    for module, cls_name, attr in _TARGETS:
        cls = getattr(importlib.import_module(module), cls_name)
        if _UNGUARDED + attr in cls.__dict__:
            continue
        setattr(cls, _UNGUARDED + attr, cls.__dict__[attr])
        setattr(cls, attr, staticmethod(functools.partial(run_guarded, module, cls_name, attr)))


def run_guarded(module: str, cls_name: str, attr: str, *args: Any, **kwargs: Any) -> Any:
    """The child's entry point: watch the parent, then run vLLM's own target."""
    cls = getattr(importlib.import_module(module), cls_name)
    # Under spawn the class is fresh (unwrapped); under fork it carries the wrapper and the original beside it.
    target = getattr(cls, _UNGUARDED + attr, None) or getattr(cls, attr)
    die_with_parent()
    if cls_name == "EngineCoreProc":
        processes.forget_inherited_sockets()  # a forked EngineCore holds the API process's port otherwise
        install()  # so that the workers this EngineCore starts die with it
    return target(*args, **kwargs)


def die_with_parent() -> None:
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    sentinel = parent.sentinel if parent is not None else None

    def watch() -> None:
        waits_on = sentinel
        while os.getppid() == parent_pid:
            if waits_on is None:
                time.sleep(_POLL_S)
                continue
            try:
                # Readable only at EOF: spawn's start-up data was read from this pipe before the target ran.
                if multiprocessing.connection.wait([waits_on], timeout=_POLL_S) and os.read(waits_on, 1) == b"":
                    break
            except OSError:  # not a pipe we can watch: fall back to the parent's pid
                waits_on = None
        print(f"llamaserve: parent process {parent_pid} is gone; ending engine process {os.getpid()}",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="llamaserve-lifeline", daemon=True).start()

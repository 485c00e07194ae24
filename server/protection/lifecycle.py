"""Graceful drain on SIGTERM and the engine watchdog.

Drain: readiness turns false and new requests get 503 at once, and so do those queued for a slot (they never
start: a client is better off retrying on another replica now than being cut at the grace); requests in flight
(streams included) get `shutdown_grace_s` to finish, then whatever still runs is cancelled (its engine requests
aborted, streams closed with an error event and [DONE], full responses a 503) so uvicorn's own graceful shutdown
finds nothing left to wait for. The engine is then stopped in about a second (engine/core.py).

Watchdog: if vLLM's engine core dies, requests in flight fail at once with 503, /health turns 503, and the
process exits non-zero (via the same drain) so an orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from server.errors import APIError
from server.protection.limits import Limits

log = logging.getLogger("llamaserve.lifecycle")

ENGINE_DEAD_EXIT_CODE = 70  # EX_SOFTWARE; 3 is uvicorn's start-up failure
MODEL_LOAD_EXIT_CODE = 78  # EX_CONFIG: most load failures are a wrong path, a broken checkpoint or a setting
_WATCH_INTERVAL_S = 0.25
# Long enough for a probe to see /health at 503 and for failed responses to leave, short enough to restart fast.
_ENGINE_DEAD_LINGER_S = 1.0


class Lifecycle:
    """Owns whether the server drains and what the process exits with; acts on the requests through `limits`."""

    def __init__(self, limits: Limits, shutdown_grace_s: float, engine_is_dead: Callable[[], bool]):
        self._limits = limits
        self._grace_s = shutdown_grace_s
        self._engine_is_dead = engine_is_dead  # False while the engine loads
        self.draining = False
        self.exit_code = 0  # what the process exits with once the server stops (non-zero: the engine died)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(self._loop.create_task(self._watch_engine(), name="llamaserve-watchdog"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def request_drain(self) -> None:
        """Safe to call from a signal handler."""
        self.draining = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if any(t.get_name() == "llamaserve-drain" for t in self._tasks):
            return
        grace = self._grace_s
        refused = self._limits.admission.close(_not_started("shutting_down", "the server is shutting down"))
        log.warning("draining: refusing new requests (%d queued refused), %d in flight get %g s to finish",
                    refused, self._limits.admission.running, grace)
        self._tasks.append(asyncio.get_running_loop().create_task(self._expire_after(grace), name="llamaserve-drain"))

    async def _expire_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        cut = self._limits.expire_all("shutdown")
        if cut:
            log.warning("drain grace of %g s is over: cancelled %d request(s) still running", grace, cut)

    async def _watch_engine(self) -> None:
        while not self._engine_is_dead():
            await asyncio.sleep(_WATCH_INTERVAL_S)
        log.critical("the engine core died: failing requests in flight and exiting with code %d", ENGINE_DEAD_EXIT_CODE)
        self.exit_code = ENGINE_DEAD_EXIT_CODE
        self._limits.admission.close(_not_started("engine_unavailable", "the engine stopped"))
        self._limits.expire_all("engine_dead")
        await asyncio.sleep(_ENGINE_DEAD_LINGER_S)
        signal.raise_signal(signal.SIGTERM)

    def exit_now(self, code: int) -> None:
        """Stops the server (through the same drain) and makes the process exit with `code`."""
        self.exit_code = code
        signal.raise_signal(signal.SIGTERM)


def _not_started(code: str, why: str):
    def error() -> APIError:
        return APIError(503, f"{why}; the request was not started", code=code, headers={"Retry-After": "5"})

    return error

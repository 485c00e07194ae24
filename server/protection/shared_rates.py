"""Rate buckets shared by every replica of a deployment, in a `BucketStore` (Redis: server/fleet/rates.py), with
this replica's own buckets (server/protection/rates.py `RateLimiter`) deciding whenever the store cannot.

The fairness rules are the local buckets': one request and a reservation (capped at a full bucket) at admission,
the prompt's exact count and the tokens used settled when the request ends, below zero as a debt, the same 429s
and x-ratelimit-* headers, read from the shared state. One round trip per admission (`charge`) and one per
settlement (`settle`): the correction of the prompt's estimate and tokens charged on the request's behalf (a guard's
checks) are carried to the settlement, so that while a request runs the shared bucket holds its estimate.

The store fails open. A call that fails or is late (the store's own time limit) makes this replica's buckets decide
its admissions for `retry_s` seconds, with no call to the store meanwhile, so that a dead store costs no latency
on every request; then one admission tries the store again (the others stay local until it answers) and, when it
answers, the shared buckets are back. During an outage each replica enforces the whole of a key's limits on its
own, as a fleet without a store does. A settlement that cannot reach the store is dropped: the shared bucket keeps
that request's reservation, which refills within a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from server.protection.rates import RateLimiter, bucket_headers, prompt_over_the_limit, rate_limited

log = logging.getLogger("llamaserve.limits")
T = TypeVar("T")


class BucketsUnavailable(Exception):
    """The store did not answer in time, or refused: this replica's buckets decide instead."""


@dataclass(frozen=True)
class Levels:
    """A key's buckets as the store left them; None for a limit that is off."""

    requests: float | None
    tokens: float | None


@dataclass(frozen=True)
class Verdict:
    """The store's answer to an admission: the levels after it (as they stand, when refused); `wait_s` > 0 when
    refused for that long; `prompt_too_large` when the prompt alone is more than a full token bucket."""

    levels: Levels
    wait_s: float = 0.0
    prompt_too_large: bool = False


class BucketStore(Protocol):
    """Where the buckets of every replica live; each call is one atomic round trip, or raises BucketsUnavailable."""

    async def charge(self, identity: str, rpm: int, tpm: int, reserve: int, prompt_tokens: int) -> Verdict:
        """Refills the identity's buckets; if one request and `reserve` tokens fit (and `prompt_tokens` fits a
        full bucket), takes them."""
        ...

    async def give_back(self, identity: str, rpm: int, tpm: int, requests: int, tokens: int) -> Levels:
        """Refills the identity's buckets, then adds `requests` and `tokens` (negative: takes them, below zero
        as a debt), each capped at its capacity."""
        ...


@dataclass
class SharedTicket:
    """An admission the store decided: what it reserved, the levels the store answered, and the tokens owed
    since (carried to the settlement)."""

    identity: str
    reserved: int
    levels: Levels
    owed: int = 0


class SharedRates:
    """The keys' buckets in a `BucketStore`, with the limits of the local `RateLimiter`; the fall-back to it while
    the store fails (the module's docstring)."""

    def __init__(self, store: BucketStore, local: RateLimiter, retry_s: float,
                 on_fallback: Callable[[], None] = lambda: None):
        self._store = store
        self._local = local
        self.retry_s = retry_s
        self._on_fallback = on_fallback
        self._retry_at: float | None = None  # set while the store is taken for down: when to try it again
        self._probing = False
        self._background: set[asyncio.Task] = set()

    @property
    def available(self) -> bool:
        """Whether the next admission asks the store (false while it is taken for down, or being probed)."""
        return self._retry_at is None or (not self._probing and time.monotonic() >= self._retry_at)

    async def charge(self, identity: str, tokens: int, prompt_tokens: int = 0) -> SharedTicket | None:
        """As `RateLimiter.charge`, on the shared buckets: the ticket of the admission, a 429, or None when the
        store cannot decide (then the local buckets do)."""
        rpm, tpm, reserve = self._local.rpm, self._local.tpm, self._local.reservation(tokens)
        try:
            verdict = await self._call(lambda: self._store.charge(identity, rpm, tpm, reserve, prompt_tokens))
        except BucketsUnavailable:
            self._on_fallback()
            return None
        headers = self.headers_of(verdict.levels)
        if verdict.prompt_too_large:
            raise prompt_over_the_limit(prompt_tokens, tpm, headers)
        if verdict.wait_s > 0:
            requests_short = verdict.levels.requests is not None and verdict.levels.requests < 1
            raise rate_limited(requests_short, verdict.wait_s, headers)
        return SharedTicket(identity, reserve, verdict.levels)

    def headers(self, ticket: SharedTicket) -> dict[str, str]:
        """The ticket's key's headers as the store last answered, less what the ticket owes since."""
        levels = ticket.levels
        owing = None if levels.tokens is None else levels.tokens - ticket.owed
        return self.headers_of(Levels(levels.requests, owing))

    async def settle(self, ticket: SharedTicket, tokens: int) -> dict[str, str] | None:
        """Takes `tokens` (negative: gives them back) and what the ticket owes from the shared token bucket; the
        headers after it, or None when the store could not be reached (the settlement is dropped)."""
        total, ticket.owed = tokens + ticket.owed, 0
        if total == 0 or not self._local.tpm:
            return self.headers(ticket)
        rpm, tpm = self._local.rpm, self._local.tpm
        try:
            ticket.levels = await self._call(lambda: self._store.give_back(ticket.identity, rpm, tpm, 0, -total))
        except BucketsUnavailable:
            self._on_fallback()
            return None
        return self.headers(ticket)

    def refund(self, ticket: SharedTicket) -> None:
        """Gives back the ticket's request and reservation (refused after admission), in the background."""
        rpm, tpm = self._local.rpm, self._local.tpm

        async def give_back() -> None:
            try:
                await self._call(lambda: self._store.give_back(ticket.identity, rpm, tpm, 1, ticket.reserved))
            except BucketsUnavailable:
                self._on_fallback()

        self.in_background(give_back())

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Runs `work` (a settlement at an exchange's end) without anyone waiting for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def finish(self) -> None:
        """Waits for the settlements still on their way (each within the store's time limit)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def headers_of(self, levels: Levels) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._local.rpm and levels.requests is not None:
            headers |= bucket_headers("requests", self._local.rpm, levels.requests)
        if self._local.tpm and levels.tokens is not None:
            headers |= bucket_headers("tokens", self._local.tpm, levels.tokens)
        return headers

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()` unless the store is taken for down; after an outage, one call at a time probes it."""
        if not self.available:
            raise BucketsUnavailable("the store is taken for down until its retry time")
        probe = self._retry_at is not None
        self._probing = probe
        try:
            result = await operation()
        except BucketsUnavailable:
            if self._retry_at is None:
                log.warning("rate limits fall back to this replica's own buckets for %.1f s at a time, until the "
                            "shared store answers", self.retry_s)
            self._retry_at = time.monotonic() + self.retry_s
            raise
        finally:
            if probe:
                self._probing = False
        if self._retry_at is not None:
            log.warning("rate limits are shared again")
            self._retry_at = None
        return result


class KeyCharge:
    """One request's charge on its key's buckets: the shared ones when they decided its admission, else this
    replica's. Settled where it was charged."""

    def __init__(self, local: RateLimiter, shared: SharedRates | None, identity: str):
        self._local = local
        self._shared = shared
        self.identity = identity
        self._ticket: SharedTicket | None = None

    @property
    def is_shared(self) -> bool:
        return self._ticket is not None

    async def charge(self, tokens: int, prompt_tokens: int) -> dict[str, str]:
        """One request and the reservation for `tokens`; the headers to send, or a 429."""
        if self._shared is not None:
            self._ticket = await self._shared.charge(self.identity, tokens, prompt_tokens)
            if self._ticket is not None:
                return self._shared.headers(self._ticket)
        return self._local.charge(self.identity, tokens, prompt_tokens)

    def refund(self, tokens: int) -> None:
        if self._ticket is not None and self._shared is not None:
            self._shared.refund(self._ticket)
        else:
            self._local.refund(self.identity, tokens)

    def take(self, tokens: int) -> None:
        """`tokens` (negative: given back) from the token bucket, whatever its level: at once from the local one,
        at the settlement from the shared one."""
        if self._ticket is not None:
            self._ticket.owed += tokens
        else:
            self._local.take(self.identity, tokens)

    def headers(self) -> dict[str, str]:
        if self._ticket is not None and self._shared is not None:
            return self._shared.headers(self._ticket)
        return self._local.headers(self.identity)

    async def settle(self, reserved: int, used: int) -> dict[str, str] | None:
        """The reservation settled to what was used; the headers after it (None: the store was not reached)."""
        if self._ticket is not None and self._shared is not None:
            return await self._shared.settle(self._ticket, used - reserved)
        self._local.settle(self.identity, reserved, used)
        return self._local.headers(self.identity)

    def settle_soon(self, reserved: int, used: int) -> None:
        """As `settle`, from code that cannot wait: at once locally, in the background on the shared buckets."""
        if self._ticket is not None and self._shared is not None:
            self._shared.in_background(self._shared.settle(self._ticket, used - reserved))
        else:
            self._local.settle(self.identity, reserved, used)

"""What keeps one client, or too many, from taking the server down.

- request body size: 413 before parsing (Content-Length, then the bytes actually read);
- rate limits per API key (per client address without keys; see `trusted_proxies`): requests and tokens per
  minute, 429 with Retry-After and OpenAI's x-ratelimit-* headers; tokens are reserved at admission (prompt +
  max_tokens x choices, at most a full bucket) and settled to what was used when the request ends;
- body read timeout: the whole body within `body_timeout_s`, else 408 and close;
- admission: at most `max_concurrent_requests` generation requests run and `max_queued_requests` wait;
  beyond that an immediate 429 `overloaded`;
- deadlines (server/deadlines.py): a request running past `request_timeout_s` (or still running when a drain or
  the engine's death expires it) is cancelled, which aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.deadlines import Ticket
from server.errors import APIError, error_response
from server.exchange import Exchange, exchange_of_scope

if TYPE_CHECKING:
    from server.settings import Protection


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Idle buckets are full again; past this many identities the full ones are forgotten.
_MAX_IDLE_BUCKETS = 10_000


# --- body size


class BodyLimitMiddleware:
    """Reads the whole body (up to the limit, within `timeout_s`) before the app sees it, so no handler ever
    gets more, and a client that sends half a body (or drips it) holds its connection `timeout_s` at most."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send, f"the request body ({declared} bytes) exceeds")
            return
        chunks: list[bytes] = []
        size = 0
        try:
            # The whole body, not each chunk: a per-read timer would let a client drip a byte at a time forever.
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._reject(scope, receive, send, "the request body exceeds")
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            exchange_of_scope(scope).reject_reason = "body_timeout"
            err = APIError(
                408, f"the request body did not arrive within {self.timeout_s:g} s ({size} bytes received)",
                code="request_timeout", headers={"Connection": "close"},
            )
            await error_response(err)(scope, receive, send)
            return
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect watching still reaches the client

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        exchange_of_scope(scope).reject_reason = "body_too_large"
        err = APIError(413, f"{what} the limit of {self.max_bytes} bytes", code="request_too_large")
        # The unread rest of the body is not drained: the connection closes after this response.
        await error_response(err)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --- rate limits


class _Bucket:
    """Token bucket: holds up to `capacity`, refills `capacity` per minute."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, capacity: int, now: float):
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.capacity),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": duration((self.capacity - self.level) / self.rate),
        }


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 120ms."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


class RateLimiter:
    def __init__(self, rpm: int, tpm: int):
        self.rpm = rpm
        self.tpm = tpm
        self._buckets: dict[str, tuple[_Bucket | None, _Bucket | None]] = {}

    def __bool__(self) -> bool:
        return bool(self.rpm or self.tpm)

    def reservation(self, tokens: int) -> int:
        """What a request that may cost `tokens` takes from its bucket at admission: all of it, but at most a
        full bucket, so that a request whose real cost fits is never impossible; `settle` charges the rest."""
        return min(tokens, self.tpm) if self.tpm else tokens

    def charge(self, identity: str, tokens: int, prompt_tokens: int = 0) -> dict[str, str]:
        """Takes one request and the `reservation` for `tokens` from the identity's buckets; returns the headers
        to send, or raises 429."""
        now = time.monotonic()
        requests, token_bucket = self._buckets_of(identity, now)
        for b in (requests, token_bucket):
            if b is not None:
                b.refill(now)
        headers: dict[str, str] = {}
        for b, kind in ((requests, "requests"), (token_bucket, "tokens")):
            if b is not None:
                headers |= b.headers(kind)
        if token_bucket is not None and prompt_tokens > token_bucket.capacity:
            raise APIError(
                429,
                f"this request's prompts are {prompt_tokens} tokens, more than the limit of "
                f"{token_bucket.capacity} tokens per minute; send a shorter prompt",
                code="rate_limit_exceeded", headers=headers,
            )
        tokens = self.reservation(tokens)
        wait = max(
            requests.wait_for(1) if requests is not None else 0.0,
            token_bucket.wait_for(tokens) if token_bucket is not None else 0.0,
        )
        if wait > 0:
            which = "requests" if requests is not None and requests.level < 1 else "tokens"
            raise APIError(
                429,
                f"rate limit reached for {which} per minute; retry after {math.ceil(wait)} s",
                code="rate_limit_exceeded",
                headers={**headers, "Retry-After": str(math.ceil(wait))},
            )
        if requests is not None:
            requests.level -= 1
            headers |= requests.headers("requests")
        if token_bucket is not None:
            token_bucket.level -= tokens
            headers |= token_bucket.headers("tokens")
        return headers

    def refund(self, identity: str, tokens: int) -> None:
        """Gives back a request and its reservation: it was refused after `charge` (queue full, timed out)."""
        requests, token_bucket = self._buckets.get(identity, (None, None))
        if requests is not None:
            requests.level = min(requests.capacity, requests.level + 1)
        if token_bucket is not None:
            token_bucket.level = min(token_bucket.capacity, token_bucket.level + self.reservation(tokens))

    def settle(self, identity: str, reserved: int, used: int) -> None:
        """A request has ended: the unused part of its reservation goes back; what it used beyond it (only
        when the reservation was capped at a full bucket) is taken, possibly below zero, so later requests
        wait for it."""
        now = time.monotonic()
        _, token_bucket = self._buckets_of(identity, now)
        if token_bucket is not None:
            token_bucket.refill(now)
            token_bucket.level = min(token_bucket.capacity, token_bucket.level + reserved - used)

    def _buckets_of(self, identity: str, now: float) -> tuple[_Bucket | None, _Bucket | None]:
        found = self._buckets.get(identity)
        if found is None:
            if len(self._buckets) >= _MAX_IDLE_BUCKETS:
                self._forget_full(now)
            found = (_Bucket(self.rpm, now) if self.rpm else None, _Bucket(self.tpm, now) if self.tpm else None)
            self._buckets[identity] = found
        return found

    def _forget_full(self, now: float) -> None:
        for identity, buckets in list(self._buckets.items()):
            if all(b is None or b.level + (now - b.updated) * b.rate >= b.capacity for b in buckets):
                del self._buckets[identity]


# --- admission


def overloaded(message: str) -> APIError:
    return APIError(429, message, code="overloaded", headers={"Retry-After": "1"})


class Admission:
    """A counting semaphore with a bounded, first-come first-served queue."""

    def __init__(self, limit: int, queue_limit: int):
        self.limit = limit
        self.queue_limit = queue_limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed: Callable[[], APIError] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self._closed is not None:
            raise self._closed()
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.queue_limit:
            raise overloaded(
                f"the server is at capacity ({self.running} requests running, {len(self._waiters)} waiting); retry shortly"
            )
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands its slot over: `running` already counts this request
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()
            elif fut in self._waiters:  # close() took out those it refused; a release() may have dropped it
                self._waiters.remove(fut)
            raise

    def close(self, error: Callable[[], APIError]) -> int:
        """No request gets a slot from now on: those waiting and those still to come fail with `error()`."""
        self._closed = error
        refused = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error())
                refused += 1
        return refused

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1


class _Budget(Protocol):
    @property
    def max_tokens(self) -> int: ...

    @property
    def candidates(self) -> int: ...


class Admissible(Protocol):
    """What admission reads of a generation request (server/generation.py's job): its prompts and its budget."""

    @property
    def prompts(self) -> Sequence[Sequence[int]]: ...

    @property
    def plan(self) -> _Budget: ...


@dataclass(frozen=True)
class Cost:
    """What a request may cost, known at admission: its prompt tokens plus the most it may generate.
    It is reserved at admission and settled at the end to prompt + the completion tokens generated."""

    prompt_tokens: int
    most_generated: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.most_generated

    @classmethod
    def of(cls, job: Admissible) -> Cost:
        prompts = job.prompts
        return cls(sum(len(p) for p in prompts), job.plan.max_tokens * job.plan.candidates * len(prompts))


NO_TOKENS = Cost(0, 0)  # a request that takes a slot and a request from the rate limits, but no tokens


class Limits:
    """The protections of one running app (on `ServerState.limits`)."""

    def __init__(self, protection: Protection):
        self.request_timeout_s = protection.request_timeout_s
        self.stalled_send_grace_s = protection.stalled_send_grace_s
        self.rates = RateLimiter(protection.rate_limit_rpm, protection.rate_limit_tpm)
        self.admission = Admission(protection.max_concurrent_requests, protection.max_queued_requests)
        self.tickets: set[Ticket] = set()

    async def admit(self, job: Admissible, exchange: Exchange) -> Ticket:
        return await self.admit_cost(Cost.of(job), exchange)

    async def admit_cost(self, cost: Cost, exchange: Exchange) -> Ticket:
        """Charges the rate limits, then waits for a slot; the slot is freed, and the tokens settled, when the
        exchange ends (after a stream's last frame), whatever way it ends."""
        loop = asyncio.get_running_loop()
        timeout_s = self.request_timeout_s
        ticket = Ticket(loop.time() + timeout_s - (time.perf_counter() - exchange.started), timeout_s,
                        self.stalled_send_grace_s)
        identity = identity_of(exchange)
        if self.rates:
            try:
                exchange.set_headers(self.rates.charge(identity, cost.tokens, cost.prompt_tokens))
            except APIError:
                exchange.reject_reason = "rate_limited"
                raise
        try:
            await ticket.within(self.admission.acquire())
        except APIError as err:
            exchange.reject_reason = "overloaded" if err.code == "overloaded" else err.code
            if self.rates:
                self.rates.refund(identity, cost.tokens)
            raise
        self.tickets.add(ticket)
        reserved = self.rates.reservation(cost.tokens) if self.rates else 0

        def end() -> None:
            self.tickets.discard(ticket)
            self.admission.release()
            if self.rates:  # completion_tokens counts what was generated
                self.rates.settle(identity, reserved, cost.prompt_tokens + (exchange.completion_tokens or 0))

        exchange.on_end(end)
        return ticket

    def charge_used(self, exchange: Exchange, tokens: int) -> None:
        """Takes `tokens` of work done for a request besides its generation (its guard checks) from its
        requester's token limit, possibly below zero, so that the requester's next requests wait for it."""
        if self.rates:
            self.rates.settle(identity_of(exchange), 0, tokens)

    def expire_all(self, reason: str) -> int:
        for t in list(self.tickets):
            t.expire(reason)
        return len(self.tickets)

    def readings(self) -> list[tuple[str, str, float]]:
        return [
            ("llamaserve_requests_in_flight", "generation requests holding a slot (until their last byte)",
             self.admission.running),
            ("llamaserve_requests_queued", "generation requests waiting for a slot", self.admission.waiting),
        ]


def identity_of(exchange: Exchange) -> str:
    """Whom the rate limits count a request against: its API key, else its client's address."""
    return exchange.key_id or f"addr:{exchange.client}"


def charged_tokens(job: Admissible) -> int:
    """What a request may cost, known at admission (`Cost`): its prompt tokens plus the most it may generate."""
    return Cost.of(job).tokens

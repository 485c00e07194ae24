"""What keeps one client, or too many, from taking the server down.

- request body size: 413 before parsing (Content-Length, then the bytes actually read);
- rate limits per API key (server/protection/rates.py): requests and tokens per minute. A request passes them before any
  work is done for its prompt (`RequestAdmission`): its tokens are reserved on an estimate (prompt characters / 4, plus
  max_tokens, or `rate_limit_default_reserve_tokens` without it, x sequences), corrected to the prompt's exact
  count once it is tokenised, and settled to what was used when the request ends;
- body read timeout: the whole body within `body_timeout_s`, else 408 and close;
- admission: at most `max_concurrent_requests` generation requests run and `max_queued_requests` wait;
  beyond that an immediate 429 `overloaded`;
- deadlines (server/protection/deadlines.py): a request running past `request_timeout_s` (or still running when a drain or
  the engine's death expires it) is cancelled, which aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.protection.deadlines import Deadline
from server.errors import APIError, error_response
from server.observe.exchange import Exchange, exchange_of_scope
from server.protection.rates import RateLimiter, prompt_over_the_limit
from server.protection.shared_rates import BucketStore, KeyCharge, SharedRates

if TYPE_CHECKING:
    from server.settings import Protection


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Prompt text is reserved at this many characters a token before it is tokenised (English text averages about
# four); the exact count replaces the estimate as soon as it is known, so only the admission decision uses it.
CHARS_PER_TOKEN = 4


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


@dataclass(frozen=True)
class Cost:
    """What a request may cost, known at admission: its prompt tokens plus the most it may generate.
    `prompt_counted` false: `prompt_tokens` is an estimate from the prompt's characters, counted later."""

    prompt_tokens: int
    most_generated: int
    prompt_counted: bool = True

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.most_generated


NO_TOKENS = Cost(0, 0)  # a request that takes a slot and a request from the rate limits, but no tokens


def identity_of(exchange: Exchange) -> str:
    """Whose buckets a request draws on: its API key's, else its client address's."""
    return exchange.key_id or f"addr:{exchange.client}"


class RequestAdmission:
    """One request's way through the limits, before the work it asks for: one request and a token reservation
    from its key's rate limits, then a slot (queued first-come first-served). Once its prompt is tokenised,
    `count_prompts` puts the exact count in place of the estimate; when the exchange ends (after a stream's last
    frame), whatever way it ends, the slot is freed and the tokens settled to what the request used.
    A request refused after admission (a prompt too long for the context) is charged all the same.
    With buckets shared by the fleet (`Limits.share`), a request is charged and settled on the shared buckets, or
    on this replica's when the shared ones could not decide (server/protection/shared_rates.py)."""

    def __init__(self, limits: Limits, exchange: Exchange):
        self._limits = limits
        self._exchange = exchange
        self._charge = KeyCharge(limits.rates, limits.shared, identity_of(exchange))
        self.deadline: Deadline | None = None
        self._prompt_tokens = 0
        self._most_generated = 0
        self._reserved = 0
        self._settled = False

    async def admit_prompts(self, text_chars: int, token_ids: int, max_tokens: int | None,
                            sequences: int) -> Deadline:
        """Admits a generation request whose prompts hold `text_chars` characters of text and `token_ids` tokens
        given as ids, and which may generate `max_tokens` (None: not given) in each of its `sequences`."""
        per_sequence = self._limits.default_reserve_tokens if max_tokens is None else max_tokens
        estimate = math.ceil(text_chars / CHARS_PER_TOKEN) + token_ids
        return await self.admit(Cost(estimate, per_sequence * sequences, prompt_counted=text_chars == 0))

    async def admit(self, cost: Cost) -> Deadline:
        """Charges the rate limits, then waits for a slot; raises 429 (limits, queue full) or 504 (deadline)."""
        limits, exchange, rates = self._limits, self._exchange, self._limits.rates
        loop = asyncio.get_running_loop()
        timeout_s = limits.request_timeout_s
        deadline = Deadline(loop.time() + timeout_s - (time.perf_counter() - exchange.started), timeout_s,
                            limits.stalled_send_grace_s)
        if rates:
            try:
                exchange.set_headers(await self._charge.charge(cost.tokens,
                                                               cost.prompt_tokens if cost.prompt_counted else 0))
            except APIError:
                exchange.reject_reason = "rate_limited"
                raise
        try:
            await deadline.within(limits.admission.acquire())
        except BaseException as err:
            if isinstance(err, APIError):
                exchange.reject_reason = "overloaded" if err.code == "overloaded" else err.code
            if rates:
                self._charge.refund(cost.tokens)
            raise
        limits.deadlines.add(deadline)
        self.deadline = deadline
        self._prompt_tokens, self._most_generated = cost.prompt_tokens, cost.most_generated
        self._reserved = rates.reservation(cost.tokens) if rates else 0
        exchange.on_end(self._end)
        limits.open_admissions[id(exchange)] = self
        return deadline

    def count_prompts(self, prompt_tokens: int) -> None:
        """The prompts are tokenised: the reservation follows their exact count (a debt if the key has not the
        difference). Prompts larger than a full bucket are refused, and charged: the tokenising was done."""
        rates = self._limits.rates
        self._prompt_tokens = prompt_tokens
        if not rates or self.deadline is None:
            return
        reserved = rates.reservation(prompt_tokens + self._most_generated)
        self._charge.take(reserved - self._reserved)
        self._reserved = reserved
        headers = self._charge.headers()
        self._exchange.set_headers(headers)  # a stream's headers show the reservation as counted
        if rates.tpm and prompt_tokens > rates.tpm:
            self._exchange.reject_reason = "rate_limited"
            raise prompt_over_the_limit(prompt_tokens, rates.tpm, headers)

    async def settle(self) -> None:
        """Settles the reservation to what the request used: its prompt tokens and the completion tokens it
        generated (`exchange.completion_tokens`); the x-ratelimit-* headers then show the key's state after it.
        Once: at the exchange's end, or before the response starts when the request is over by then."""
        if self._settled or self.deadline is None or not self._limits.rates:
            return
        self._settled = True
        headers = await self._charge.settle(self._reserved, self._used())
        if headers is not None:
            self._exchange.set_headers(headers)

    def take(self, tokens: int) -> None:
        """Charges `tokens` more (work done on the request's behalf); the headers of a response not yet started
        show it."""
        if self._settled:
            self._charge.settle_soon(0, tokens)
        else:
            self._charge.take(tokens)
        if self._limits.rates.tpm:
            self._exchange.set_headers(self._charge.headers())

    def _used(self) -> int:
        return self._prompt_tokens + (self._exchange.completion_tokens or 0)

    def _end(self) -> None:
        assert self.deadline is not None
        self._limits.deadlines.discard(self.deadline)
        self._limits.admission.release()
        self._limits.open_admissions.pop(id(self._exchange), None)
        if not self._settled and self._limits.rates:  # from the middleware, which cannot wait for a store
            self._settled = True
            self._charge.settle_soon(self._reserved, self._used())
            if not self._charge.is_shared:
                self._exchange.set_headers(self._charge.headers())


class Limits:
    """The protections of one running app (on `ServerState.limits`)."""

    def __init__(self, protection: Protection):
        self.request_timeout_s = protection.request_timeout_s
        self.stalled_send_grace_s = protection.stalled_send_grace_s
        self.default_reserve_tokens = protection.rate_limit_default_reserve_tokens
        self.rates = RateLimiter(protection.rate_limit_rpm, protection.rate_limit_tpm)
        self.shared: SharedRates | None = None
        self.open_admissions: dict[int, RequestAdmission] = {}  # by id of their exchange, until it ends
        self.admission = Admission(protection.max_concurrent_requests, protection.max_queued_requests)
        self.deadlines: set[Deadline] = set()

    def share(self, store: BucketStore, retry_s: float, on_fallback: Callable[[], None] = lambda: None) -> None:
        """Keys' buckets from now on in `store`, shared by every replica (server/protection/shared_rates.py);
        this replica's own decide for `retry_s` seconds at a time while the store fails."""
        if self.rates:
            self.shared = SharedRates(store, self.rates, retry_s, on_fallback)

    def admission_for(self, exchange: Exchange) -> RequestAdmission:
        """The way through the limits for the request `exchange` records (nothing is charged yet)."""
        return RequestAdmission(self, exchange)

    def charge_tokens(self, exchange: Exchange, tokens: int) -> None:
        """Charges `tokens` more to the key of an admitted request, for work done on its behalf beyond its
        prompt and completion (a guard's check): taken at once, below zero as a debt its next admission waits
        for. The headers of a response not yet started show it."""
        if not self.rates or tokens <= 0:
            return
        admitted = self.open_admissions.get(id(exchange))
        if admitted is not None:
            admitted.take(tokens)
            return
        identity = identity_of(exchange)
        self.rates.take(identity, tokens)
        if self.rates.tpm:
            exchange.set_headers(self.rates.headers(identity))

    def expire_all(self, reason: str) -> int:
        for t in list(self.deadlines):
            t.expire(reason)
        return len(self.deadlines)

    def readings(self) -> list[tuple[str, str, float]]:
        return [
            ("llamaserve_requests_in_flight", "generation requests holding a slot (until their last byte)",
             self.admission.running),
            ("llamaserve_requests_queued", "generation requests waiting for a slot", self.admission.waiting),
        ]

"""Rate limits per API key (per client address without keys; see `trusted_proxies`): requests and tokens per
minute, as token buckets; 429 with Retry-After and OpenAI's x-ratelimit-* headers.

Tokens are reserved when a request is admitted and settled to what it used when it ends (server/protection/limits.py
`RequestAdmission`). A bucket may go below zero: a key that used more than it reserved owes the rest, and its next request
waits until the debt is paid back and its own reservation fits.
"""

from __future__ import annotations

import math
import time

from server.errors import APIError

# Idle buckets are full again; past this many identities the full ones are forgotten.
_MAX_IDLE_BUCKETS = 10_000


class _Bucket:
    """Token bucket: holds up to `capacity`, refills `capacity` per minute; below zero it is a debt."""

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
        return bucket_headers(kind, self.capacity, self.level)


def bucket_headers(kind: str, capacity: int, level: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers of one bucket (`kind`: requests or tokens) holding `level` of `capacity`."""
    return {
        f"x-ratelimit-limit-{kind}": str(capacity),
        f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(level))),
        f"x-ratelimit-reset-{kind}": duration((capacity - level) * 60.0 / capacity),
    }


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 120ms."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def rate_limited(requests_short: bool, wait_s: float, headers: dict[str, str]) -> APIError:
    """The 429 of a request its key's buckets cannot take for `wait_s` seconds (`requests_short`: for want of a
    request, else of tokens)."""
    which = "requests" if requests_short else "tokens"
    return APIError(
        429,
        f"rate limit reached for {which} per minute; retry after {math.ceil(wait_s)} s",
        code="rate_limit_exceeded",
        headers={**headers, "Retry-After": str(math.ceil(wait_s))},
    )


def prompt_over_the_limit(prompt_tokens: int, capacity: int, headers: dict[str, str]) -> APIError:
    return APIError(
        429,
        f"this request's prompts are {prompt_tokens} tokens, more than the limit of {capacity} tokens per minute; "
        "send a shorter prompt",
        code="rate_limit_exceeded", headers=headers,
    )


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
        to send, or raises 429. `prompt_tokens`, when counted already, must fit in a full bucket."""
        now = time.monotonic()
        requests, token_bucket = self._buckets_of(identity, now)
        for b in (requests, token_bucket):
            if b is not None:
                b.refill(now)
        headers = self._headers(requests, token_bucket)
        if token_bucket is not None and prompt_tokens > token_bucket.capacity:
            raise prompt_over_the_limit(prompt_tokens, token_bucket.capacity, headers)
        tokens = self.reservation(tokens)
        wait = max(
            requests.wait_for(1) if requests is not None else 0.0,
            token_bucket.wait_for(tokens) if token_bucket is not None else 0.0,
        )
        if wait > 0:
            raise rate_limited(requests is not None and requests.level < 1, wait, headers)
        if requests is not None:
            requests.level -= 1
        if token_bucket is not None:
            token_bucket.level -= tokens
        return self._headers(requests, token_bucket)

    def refund(self, identity: str, tokens: int) -> None:
        """Gives back a request and its reservation: it was refused after `charge` (queue full, timed out)."""
        requests, token_bucket = self._buckets.get(identity, (None, None))
        if requests is not None:
            requests.level = min(requests.capacity, requests.level + 1)
        if token_bucket is not None:
            token_bucket.level = min(token_bucket.capacity, token_bucket.level + self.reservation(tokens))

    def take(self, identity: str, tokens: int) -> None:
        """Takes `tokens` (a negative number gives them back) from the identity's token bucket whatever its
        level: below zero it is a debt, which the identity's next admission waits for."""
        now = time.monotonic()
        _, token_bucket = self._buckets_of(identity, now)
        if token_bucket is not None:
            token_bucket.refill(now)
            token_bucket.level = min(token_bucket.capacity, token_bucket.level - tokens)

    def settle(self, identity: str, reserved: int, used: int) -> None:
        """A request has ended: the unused part of its reservation goes back; what it used beyond it is taken,
        possibly below zero."""
        self.take(identity, used - reserved)

    def headers(self, identity: str) -> dict[str, str]:
        """The identity's x-ratelimit-* headers as its buckets stand now."""
        now = time.monotonic()
        requests, token_bucket = self._buckets_of(identity, now)
        for b in (requests, token_bucket):
            if b is not None:
                b.refill(now)
        return self._headers(requests, token_bucket)

    @staticmethod
    def _headers(requests: _Bucket | None, token_bucket: _Bucket | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        for b, kind in ((requests, "requests"), (token_bucket, "tokens")):
            if b is not None:
                headers |= b.headers(kind)
        return headers

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

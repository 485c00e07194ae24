"""The one connection to the fleet's Redis, with a time limit on every call.

Redis is shared state, never a dependency of generation: a call that fails or outlasts `timeout_s` raises
`RedisDown`, and each user of the link decides what that means (limits fail open, stored responses answer 503).
The link logs once when Redis goes away and once when it is back, so a long outage is two log lines, not one per
request. Its metrics (`collector`): whether Redis answered the last call, and how often each concern did without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger("llamaserve.fleet")
T = TypeVar("T")


class RedisDown(Exception):
    """Redis did not answer in time, or refused: the caller falls back as its concern says."""


class RedisLink:
    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        # One retry, on a new connection, of a call whose connection broke: after a Redis restart every pooled
        # connection is the old server's, and each would otherwise fail one call before it is replaced.
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30,
            retry=Retry(NoBackoff(), 1), retry_on_error=[aioredis.ConnectionError])
        self.down_since: float | None = None
        self.fallbacks: Counter[str] = Counter()

    @property
    def healthy(self) -> bool:
        return self.down_since is None

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """`operation(client)` within the time limit; RedisDown if it fails or is late."""
        try:
            result = await asyncio.wait_for(operation(self.client), self.timeout_s)
        except (aioredis.RedisError, OSError, asyncio.TimeoutError) as exc:
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning("redis at %s unreachable (%s): shared state falls back until it is back",
                            _redacted(self.url), type(exc).__name__)
            raise RedisDown(str(exc) or type(exc).__name__) from exc
        if self.down_since is not None:
            log.warning("redis at %s is back after %.1fs", _redacted(self.url), time.monotonic() - self.down_since)
            self.down_since = None
        return result

    def fell_back(self, concern: str) -> None:
        """Counts one thing `concern` (rate_limits, ...) did without Redis."""
        self.fallbacks[concern] += 1

    def collector(self) -> _LinkMetrics:
        """The link's metrics, for a Prometheus registry."""
        return _LinkMetrics(self)

    async def close(self) -> None:
        await self.client.aclose()


class _LinkMetrics:
    def __init__(self, link: RedisLink):
        self._link = link

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("llamaserve_shared_state_up",
                                "1 while the fleet's Redis answered its last call, 0 since one failed",
                                value=1 if self._link.healthy else 0)
        fallbacks = CounterMetricFamily("llamaserve_shared_state_fallbacks",
                                        "things done without the fleet's Redis, by concern", labels=["concern"])
        for concern, count in sorted(self._link.fallbacks.items()):
            fallbacks.add_metric([concern], count)
        yield fallbacks


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest

"""Per-key rate limits shared by every replica, kept in Redis (GCRA).

The generic cell rate algorithm stores one number per key, the theoretical arrival
time (TAT) of the next request. A key of `rate` requests/s and `burst` may send
`burst` requests at once, then one every 1/rate seconds. The Redis script reads,
decides and writes in one atomic step on Redis's own clock (TIME), so replicas with
skewed clocks share one limit. When Redis does not answer, the limiter fails OPEN
(serving beats limiting) and counts it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.common.errors import DependencyUnavailable, SignalopsError
from libs.common.observability.logging import get_logger
from libs.common.resilience import Policy

log = get_logger(__name__)

KEY_PREFIX = "ratelimit:v1:"  # versioned: a change of the stored value changes the key

# KEYS[1] the key's TAT; ARGV[1] seconds per request, ARGV[2] burst.
# Returns {allowed (0|1), retry_after_s, remaining} as strings (Lua numbers would be
# truncated to integers on the way out).
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {'0', string.format('%.6f', allow_at - now), '0'}
end
local ttl_ms = math.ceil((new_tat - now) * 1000) + 1
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', ttl_ms)
return {'1', '0', tostring(math.floor((now - allow_at) / interval))}
"""


@dataclass(frozen=True)
class Limit:
    """A sustained rate (requests/s) and a burst (requests at once, at least 1)."""

    rate_per_s: float
    burst: int

    @classmethod
    def of(cls, rate_per_s: float, burst: int | None = None) -> Limit:
        """`burst` defaults to one second's worth of requests (at least 1)."""
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        return cls(rate_per_s, burst if burst is not None else max(1, math.ceil(rate_per_s)))

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate_per_s


@dataclass(frozen=True)
class Decision:
    """One request's verdict; `retry_after_s` > 0 only when refused."""

    allowed: bool
    retry_after_s: float = 0.0
    remaining: int = 0
    failed_open: bool = False

    @property
    def retry_after_header(self) -> str:
        """Retry-After in whole seconds, rounded up (at least 1 when refused)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimited(SignalopsError):
    """A key sent more than its limit: 429 with Retry-After."""

    code = "rate_limited"

    def __init__(self, key: str, limit: Limit, decision: Decision) -> None:
        super().__init__(
            f"the API key {key!r} is limited to {limit.rate_per_s:g} requests/s with a burst "
            f"of {limit.burst}; retry after {decision.retry_after_s:.3f}s"
        )
        self.decision = decision


def gcra(tat: float | None, now: float, limit: Limit) -> tuple[Decision, float | None]:
    """The GCRA step the Redis script runs: (decision, new TAT or None if unchanged).

    Args:
        tat: the stored theoretical arrival time, None when the key has none.
        now: the current time in seconds.
        limit: the key's rate and burst.
    """
    interval = limit.interval_s
    new_tat = max(tat if tat is not None else now, now) + interval
    allow_at = new_tat - limit.burst * interval
    if now < allow_at:
        return Decision(False, retry_after_s=allow_at - now), None
    return Decision(True, remaining=math.floor((now - allow_at) / interval)), new_tat


class RateLimiter(Protocol):
    async def acquire(self, key: str, limit: Limit) -> Decision:
        """Count one request of `key` against `limit`; never raises for an outage."""
        ...


class MemoryRateLimiter:
    """The same algorithm in one process (unit tests, a single instance)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}

    async def acquire(self, key: str, limit: Limit) -> Decision:
        decision, new_tat = gcra(self._tat.get(key), self._clock(), limit)
        if new_tat is not None:
            self._tat[key] = new_tat
        return decision


class RedisRateLimiter:
    """GCRA in one atomic Redis script per request; fails open when Redis is down.

    Args:
        client: a redis.asyncio client (`make_redis`), owned by this limiter.
        timeout_s: budget of one check; past it the request goes through.
        prefix: key prefix, so tests and tenants can share a Redis.
    """

    def __init__(
        self, client: aioredis.Redis, *, timeout_s: float = 0.05, prefix: str = KEY_PREFIX
    ) -> None:
        self._r = client
        self._script = client.register_script(_GCRA)
        self._prefix = prefix
        # One attempt: a retry would only add latency to a request that will pass anyway.
        self._policy = Policy("redis-ratelimit", timeout_s=timeout_s, attempts=1, reset_s=5.0)
        self.failed_open = 0

    @property
    def state(self) -> str:
        """The breaker in front of Redis: closed | half_open | open."""
        return self._policy.state

    async def acquire(self, key: str, limit: Limit) -> Decision:
        try:
            allowed, retry_after, remaining = await self._policy.call(
                self._script, keys=[self._prefix + key], args=[limit.interval_s, limit.burst]
            )
        except (DependencyUnavailable, RedisError) as exc:  # e.g. OOM refusing the SET
            self.failed_open += 1
            if self.failed_open == 1 or self.failed_open % 1000 == 0:
                log.warning("rate_limit_failed_open", error=str(exc), count=self.failed_open)
            return Decision(True, failed_open=True)
        return Decision(
            _text(allowed) == "1",
            retry_after_s=float(_text(retry_after)),
            remaining=int(_text(remaining)),
        )

    async def close(self) -> None:
        await self._r.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

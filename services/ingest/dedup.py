"""Redis adapters of ingest's idempotency: the dedup window of accepted records and the
ledger of replayed dead letters.

Memory: one key per accepted record (about 100 bytes with Redis's overhead) for
`SIGNALOPS_DEDUP_WINDOW_S`; size Redis for window x rate (README, "Guarantees").
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from libs.common.errors import DependencyUnavailable
from libs.common.observability import get_logger
from libs.common.resilience import Policy
from services.ingest.accounting import DEDUP

log = get_logger(__name__)

# Every key of a batch set with its TTL in one command: a pipeline of one SET per key
# cost about 60 ms per 1,000 keys (redis-py's Python side), the script about 10 ms
# (2-core machine under load). Standalone Redis only, as the online store.
_MARK = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, '1', 'EX', ARGV[1])
end
return #KEYS
"""


def redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client whose socket waits are bounded too, so a paused server cannot hang it."""
    return aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class RedisDedupWindow:
    """Keys of records accepted within the last `window_s` seconds, one key each with a TTL.

    Args:
        client: the Redis connection pool.
        policy: timeout and breaker (one attempt: a request never waits out Redis).
        window_s: how long an accepted record's key is remembered.
    """

    enabled = True

    def __init__(self, client: aioredis.Redis, policy: Policy, *, window_s: int) -> None:
        self.client = client
        self.policy = policy
        self.window_s = window_s
        self._mark = client.register_script(_MARK)

    async def seen(self, keys: Sequence[str]) -> set[str] | None:
        if not keys:
            return set()
        try:
            found = await self.policy.call_once(self.client.mget, list(keys))
        except DependencyUnavailable as exc:
            # Fail open: a record is never refused because Redis is away (issue 9).
            DEDUP.labels("unchecked").inc(len(keys))
            log.warning("dedup_unchecked", records=len(keys), error=str(exc))
            return None
        DEDUP.labels("checked").inc(len(keys))
        return {k for k, v in zip(keys, found, strict=True) if v is not None}

    async def mark(self, keys: Sequence[str]) -> None:
        if not keys:
            return

        async def write() -> None:
            await self._mark(keys=list(keys), args=[self.window_s])

        try:
            await self.policy.call_once(write)
        except DependencyUnavailable as exc:
            DEDUP.labels("mark_failed").inc(len(keys))
            log.warning("dedup_mark_failed", records=len(keys), error=str(exc))

    async def forget(self, keys: Sequence[str]) -> None:
        if keys:
            await self.policy.call(self.client.delete, *keys)


class RedisReplayLedger:
    """The ids of dead letters already replayed: one Redis set per dead-letter topic,
    its TTL renewed on every write.

    Unlike the dedup window this one does not fail open: a replay that cannot ask it
    stops (503), since replaying twice is what it exists to prevent.
    """

    def __init__(self, client: aioredis.Redis, policy: Policy, *, topic: str, ttl_s: int) -> None:
        self.client = client
        self.policy = policy
        self.key = f"dlq:replayed:{topic}"
        self.ttl_s = ttl_s

    async def replayed(self, ids: Sequence[str]) -> set[str]:
        """Those of `ids` already replayed. Raises DependencyUnavailable."""
        if not ids:
            return set()
        flags = await self.policy.call(self.client.smismember, self.key, list(ids))
        return {i for i, f in zip(ids, flags, strict=True) if f}

    async def record(self, ids: Sequence[str]) -> None:
        """Remember `ids` as replayed (after their replay was acknowledged).
        Raises DependencyUnavailable."""
        if not ids:
            return

        async def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(self.key, *ids)
            pipe.expire(self.key, self.ttl_s)
            await pipe.execute()

        await self.policy.call(write)


class MemoryReplayLedger:
    """The in-process ledger: the test fake of the Redis one."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def replayed(self, ids: Sequence[str]) -> set[str]:
        return self.ids.intersection(ids)

    async def record(self, ids: Sequence[str]) -> None:
        self.ids.update(ids)

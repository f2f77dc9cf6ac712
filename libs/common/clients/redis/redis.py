"""Redis adapter of the online store (redis.asyncio, pipelined round trips)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.common.clients.redis.base import (
    StoredEvent,
    StoredVector,
    history_key,
    vector_key,
)
from libs.common.errors import DependencyUnavailable
from libs.common.observability.metrics import REDIS_OOM

# Only a vector with a newer (or equal) as_of replaces the stored one, so a replayed
# or reordered batch never moves features backwards. Atomic on the server.
_WRITE_IF_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and doc['as_of'] and tonumber(doc['as_of']) > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


async def _execute(pipe: aioredis.client.Pipeline) -> list[Any]:
    try:
        return list(await pipe.execute())
    except ResponseError as exc:
        if "OOM command not allowed" in str(exc):
            # noeviction: Redis is full. Count it (alerted on) and fail the batch, which
            # the consume loop retries as an outage until memory is freed or added.
            REDIS_OOM.inc()
            raise DependencyUnavailable("redis", f"out of memory: {exc}") from exc
        raise


def make_redis(url: str, timeout_s: float = 2.0) -> aioredis.Redis:
    """A client with timeouts and retries with jittered backoff on connection errors."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )


class RedisFeatureStore:
    """The online store on Redis.

    Args:
        client: from `make_redis`.
        vector_ttl_s: feature vectors expire after this long without an update (an
            entity that stopped sending is answered as a cold start, not with stale
            features kept forever).
    """

    def __init__(self, client: aioredis.Redis, *, vector_ttl_s: float = 7 * 86400) -> None:
        self._r = client
        self._vector_ttl_s = max(1, int(vector_ttl_s))
        self._write = client.register_script(_WRITE_IF_NEWER)

    async def add_events(
        self,
        source: str,
        version: int,
        entity_id: str,
        events: Sequence[StoredEvent],
        *,
        retention_s: float,
    ) -> list[StoredEvent]:
        key = history_key(source, version, entity_id)
        mapping = {
            json.dumps({"id": e.event_id, "f": dict(e.fields)}, sort_keys=True): e.ts
            for e in events
        }
        newest = max(e.ts for e in events)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zadd(key, mapping)
            pipe.zremrangebyscore(key, "-inf", f"({newest - retention_s}")
            pipe.zrange(key, 0, -1, withscores=True)
            pipe.expire(key, int(retention_s * 2) + 60)
            _, _, rows, _ = await _execute(pipe)
        out = []
        for member, score in rows:
            doc = json.loads(member)
            out.append(StoredEvent(doc["id"], float(score), doc["f"]))
        return out

    async def write_vectors(self, items: Sequence[tuple[str, int, str, StoredVector]]) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            for view, version, entity_id, vec in items:
                doc = json.dumps(
                    {"values": vec.values, "as_of": vec.as_of, "updated_at": vec.updated_at}
                )
                await self._write(
                    keys=[vector_key(view, version, entity_id)],
                    args=[doc, vec.as_of, self._vector_ttl_s],
                    client=pipe,
                )
            await _execute(pipe)

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        keys = [vector_key(v, ver, e) for e in entity_ids for v, ver in views]
        raw = await self._r.mget(keys) if keys else []
        out: list[dict[str, StoredVector]] = []
        i = 0
        for _ in entity_ids:
            found: dict[str, StoredVector] = {}
            for view, _ver in views:
                doc = raw[i]
                i += 1
                if doc:
                    d = json.loads(doc)
                    found[view] = StoredVector(d["values"], d["as_of"], d["updated_at"])
            out.append(found)
        return out

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._r.aclose()

"""Redis adapter of the online store (redis.asyncio, pipelined round trips)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.common.clients.redis.base import STALE_SOURCES_KEY, StoredVector, vector_key
from libs.common.errors import DependencyUnavailable
from libs.common.observability.metrics import REDIS_OOM

# Every SET of a batch in one script: atomic like MULTI/EXEC, but one command and one
# reply instead of one per key. Keys and values travel as two arguments (their sizes,
# little-endian uint32 in key, value order, and their bytes back to back): packing one
# argument per key and value was most of the client's share of a batch's CPU
# (docs/benchmarks.md, "Features service"). Standalone Redis only: the keys are not
# declared (Redis Cluster is not supported yet, README).
_SET_PACKED = """
local ttl = ARGV[1]
local sizes, body = ARGV[2], ARGV[3]
local at, n = 1, #sizes / 4
for i = 1, n, 2 do
  local ksize = struct.unpack('<I4', sizes, 4 * i - 3)
  local vsize = struct.unpack('<I4', sizes, 4 * i + 1)
  local key = string.sub(body, at, at + ksize - 1)
  at = at + ksize
  redis.call('SET', key, string.sub(body, at, at + vsize - 1), 'EX', ttl)
  at = at + vsize
end
return n / 2
"""


async def _execute(pipe: aioredis.client.Pipeline) -> list[Any]:
    try:
        return list(await pipe.execute())
    except ResponseError as exc:
        _raise_if_full(exc)
        raise


def _raise_if_full(exc: ResponseError) -> None:
    """noeviction: Redis is full. Count it (alerted on) and fail the batch, which the
    consume loop retries as an outage until memory is freed or added.
    """
    # redis-py 8 raises OutOfMemoryError (its text lost the "OOM" prefix); inside a
    # script or MULTI/EXEC the refusal comes back as an error naming it.
    text = str(exc)
    if isinstance(exc, OutOfMemoryError) or "maxmemory" in text or "OOM" in text:
        REDIS_OOM.inc()
        raise DependencyUnavailable("redis", f"out of memory: {exc}") from exc


def _vector_doc(vec: StoredVector) -> bytes:
    """The JSON document of a vector (serve reads it). orjson: several times faster than
    json on the features service's hot path; a non-finite number is written as null.
    """
    return orjson.dumps({"values": vec.values, "as_of": vec.as_of, "updated_at": vec.updated_at})


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
        self._set_packed = client.register_script(_SET_PACKED)

    async def load_states(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._r.mget(list(keys))
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def save(
        self,
        states: Sequence[tuple[str, bytes]],
        vectors: Sequence[tuple[str, int, str, StoredVector]],
    ) -> None:
        if not states and not vectors:
            return
        # One script: a crash leaves either the whole batch's writes or none, and the
        # states' Kafka positions then make the redelivered batch a no-op.
        parts: list[bytes] = []
        for key, value in states:
            parts += (key.encode(), value)
        for view, version, entity_id, vec in vectors:
            parts += (vector_key(view, version, entity_id).encode(), _vector_doc(vec))
        sizes = np.fromiter(map(len, parts), dtype="<u4", count=len(parts)).tobytes()
        try:
            await self._set_packed(args=[self._vector_ttl_s, sizes, b"".join(parts)])
        except ResponseError as exc:
            _raise_if_full(exc)
            raise

    async def write_vectors(self, items: Sequence[tuple[str, int, str, StoredVector]]) -> None:
        if not items:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            self._queue_vectors(pipe, items)
            await _execute(pipe)

    def _queue_vectors(
        self, pipe: aioredis.client.Pipeline, items: Sequence[tuple[str, int, str, StoredVector]]
    ) -> None:
        for view, version, entity_id, vec in items:
            pipe.set(vector_key(view, version, entity_id), _vector_doc(vec), ex=self._vector_ttl_s)

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
                    d = orjson.loads(doc)
                    found[view] = StoredVector(d["values"], d["as_of"], d["updated_at"])
            out.append(found)
        return out

    async def mark_sources(self, stale: Mapping[str, float], fresh: Sequence[str]) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            for source, snapshot_at in stale.items():
                pipe.hset(STALE_SOURCES_KEY, source, snapshot_at)
            if fresh:
                pipe.hdel(STALE_SOURCES_KEY, *fresh)
            await _execute(pipe)

    async def stale_sources(self) -> dict[str, float]:
        found = await self._r.hgetall(STALE_SOURCES_KEY)
        return {_text(k): float(v) for k, v in found.items()}

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._r.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

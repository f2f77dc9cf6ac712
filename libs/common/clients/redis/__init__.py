"""The online feature store: interface, Redis adapter, in-memory fake."""

from libs.common.clients.redis.base import FeatureStore, StoredVector, state_key
from libs.common.clients.redis.memory import MemoryFeatureStore
from libs.common.clients.redis.redis import RedisFeatureStore, make_redis

__all__ = [
    "FeatureStore",
    "MemoryFeatureStore",
    "RedisFeatureStore",
    "StoredVector",
    "make_redis",
    "state_key",
]

"""In-memory online store: the fake for handler and serve tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from libs.common.clients.redis.base import (
    StoredEvent,
    StoredVector,
    history_key,
    vector_key,
)


@dataclass
class MemoryFeatureStore:
    events: dict[str, dict[str, StoredEvent]] = field(default_factory=dict)
    vectors: dict[str, StoredVector] = field(default_factory=dict)

    async def add_events(
        self,
        source: str,
        version: int,
        entity_id: str,
        events: Sequence[StoredEvent],
        *,
        retention_s: float,
    ) -> list[StoredEvent]:
        hist = self.events.setdefault(history_key(source, version, entity_id), {})
        for e in events:
            hist[e.event_id] = e
        newest = max(e.ts for e in hist.values())
        for eid in [k for k, e in hist.items() if e.ts < newest - retention_s]:
            del hist[eid]
        return sorted(hist.values(), key=lambda e: e.ts)

    async def write_vectors(self, items: Sequence[tuple[str, int, str, StoredVector]]) -> None:
        for view, version, entity_id, vec in items:
            key = vector_key(view, version, entity_id)
            cur = self.vectors.get(key)
            if cur is None or cur.as_of <= vec.as_of:
                self.vectors[key] = vec

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        return [
            {
                v: self.vectors[vector_key(v, ver, e)]
                for v, ver in views
                if vector_key(v, ver, e) in self.vectors
            }
            for e in entity_ids
        ]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

"""In-memory online store: the fake for handler and serve tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from libs.common.clients.redis.base import StoredVector, vector_key


@dataclass
class MemoryFeatureStore:
    states: dict[str, bytes] = field(default_factory=dict)
    vectors: dict[str, StoredVector] = field(default_factory=dict)
    stale: dict[str, float] = field(default_factory=dict)

    async def load_states(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.states.get(k) for k in keys]

    async def save(
        self,
        states: Sequence[tuple[str, bytes]],
        vectors: Sequence[tuple[str, int, str, StoredVector]],
    ) -> None:
        self.states.update(states)
        await self.write_vectors(vectors)

    async def write_vectors(self, items: Sequence[tuple[str, int, str, StoredVector]]) -> None:
        for view, version, entity_id, vec in items:
            self.vectors[vector_key(view, version, entity_id)] = vec

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

    async def mark_sources(self, stale: Mapping[str, float], fresh: Sequence[str]) -> None:
        self.stale.update(stale)
        for source in fresh:
            self.stale.pop(source, None)

    async def stale_sources(self) -> dict[str, float]:
        return dict(self.stale)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

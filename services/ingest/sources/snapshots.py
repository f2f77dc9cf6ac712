"""The last good snapshot of each polled source (its accepted signals and poll time).

Kept in Redis so a restarted ingest still has it while the source is down. One key
per source and schema version: a schema change never re-emits records of the old one
(STYLE.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import orjson
import redis.asyncio as aioredis

from libs.common.schemas import Signal


@dataclass(frozen=True)
class Snapshot:
    """What one good poll accepted, and when it was answered."""

    taken_at: datetime
    signals: list[Signal]

    def age_s(self, now: datetime) -> float:
        return (now - self.taken_at).total_seconds()

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "taken_at": self.taken_at.isoformat(),
                "signals": [s.model_dump(mode="json") for s in self.signals],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> Snapshot:
        doc = orjson.loads(data)
        return cls(
            datetime.fromisoformat(doc["taken_at"]),
            [Signal.model_validate(s) for s in doc["signals"]],
        )


def snapshot_key(source: str, version: int) -> str:
    return f"poll:snapshot:{source}:v{version}"


class SnapshotStore(Protocol):
    async def save(self, source: str, version: int, snapshot: Snapshot) -> None:
        """Replace the source's snapshot (the newest good poll wins)."""
        ...

    async def load(self, source: str, version: int) -> Snapshot | None:
        """The source's snapshot, or None when no poll of this version ever succeeded."""
        ...


class RedisSnapshotStore:
    """Snapshots in Redis (the online store's server), one string key each, no expiry:
    the poller judges the age, so an expired snapshot is reported, not just gone."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def save(self, source: str, version: int, snapshot: Snapshot) -> None:
        await self._client.set(snapshot_key(source, version), snapshot.to_bytes())

    async def load(self, source: str, version: int) -> Snapshot | None:
        data = await self._client.get(snapshot_key(source, version))
        return None if data is None else Snapshot.from_bytes(data)


@dataclass
class MemorySnapshotStore:
    """The in-process fake (unit tests)."""

    items: dict[str, bytes] = field(default_factory=dict)

    async def save(self, source: str, version: int, snapshot: Snapshot) -> None:
        self.items[snapshot_key(source, version)] = snapshot.to_bytes()

    async def load(self, source: str, version: int) -> Snapshot | None:
        data = self.items.get(snapshot_key(source, version))
        return None if data is None else Snapshot.from_bytes(data)

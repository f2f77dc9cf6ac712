"""The online store: per-entity event history (streaming state) and feature vectors.

Keys embed the source or view version, so a definition change never mixes old and
new semantics (STYLE.md section 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from libs.common.features import FeatureVector


@dataclass(frozen=True)
class StoredVector:
    """A feature vector as served: values, the event time they hold as of, write time."""

    values: FeatureVector
    as_of: float
    updated_at: float


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    ts: float
    fields: Mapping[str, Any]


def history_key(source: str, version: int, entity_id: str) -> str:
    return f"ev:{source}:v{version}:{entity_id}"


def vector_key(view: str, version: int, entity_id: str) -> str:
    return f"fv:{view}:v{version}:{entity_id}"


class FeatureStore(Protocol):
    async def add_events(
        self,
        source: str,
        version: int,
        entity_id: str,
        events: Sequence[StoredEvent],
        *,
        retention_s: float,
    ) -> list[StoredEvent]:
        """Add events (idempotent by event id), trim beyond retention, return the history."""
        ...

    async def write_vectors(self, items: Sequence[tuple[str, int, str, StoredVector]]) -> None:
        """Write (view, version, entity_id, vector) items; a later as_of wins."""
        ...

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        """For each entity: view name -> vector, views without a vector left out."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

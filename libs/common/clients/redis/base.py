"""The online store: per-entity streaming state and feature vectors, per view.

Keys embed the view version (and a state's layout fingerprint), so a definition
change never mixes old and new semantics (STYLE.md section 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from libs.common.features.engine import FeatureVector


@dataclass(frozen=True)
class StoredVector:
    """A feature vector as served: values, the event time they hold as of, write time."""

    values: FeatureVector
    as_of: float
    updated_at: float


def state_key(view: str, version: int, fingerprint: str, entity_id: str) -> str:
    """Where the streaming state of one entity for one view lives (features/codec.py)."""
    return f"fs:{view}:v{version}:{fingerprint}:{entity_id}"


def vector_key(view: str, version: int, entity_id: str) -> str:
    return f"fv:{view}:v{version}:{entity_id}"


# Hash of source name -> snapshot time of the sources whose signals are stale re-emissions.
STALE_SOURCES_KEY = "sources:stale"


class FeatureStore(Protocol):
    async def load_states(self, keys: Sequence[str]) -> list[bytes | None]:
        """The state values at `keys` (None where absent), in one round trip."""
        ...

    async def save(
        self,
        states: Sequence[tuple[str, bytes]],
        vectors: Sequence[tuple[str, int, str, StoredVector]],
    ) -> None:
        """Write states (key, value) and vectors (view, version, entity_id, vector)
        atomically, in one round trip: a reader never sees a vector without its state.
        """
        ...

    async def write_vectors(self, items: Sequence[tuple[str, int, str, StoredVector]]) -> None:
        """Write (view, version, entity_id, vector) items."""
        ...

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        """For each entity: view name -> vector, views without a vector left out."""
        ...

    async def mark_sources(self, stale: Mapping[str, float], fresh: Sequence[str]) -> None:
        """Mark sources served from a down polled source's cached snapshot (source ->
        the snapshot's poll time, epoch seconds), and unmark `fresh` ones (issue 9)."""
        ...

    async def stale_sources(self) -> dict[str, float]:
        """Every source marked stale, with its snapshot's poll time (epoch seconds)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

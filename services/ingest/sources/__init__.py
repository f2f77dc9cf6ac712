"""Polled HTTP sources: one task per source behind its own breaker, cached fallback."""

from services.ingest.sources.auth import auth_headers
from services.ingest.sources.poller import PolledSource, PolledSources
from services.ingest.sources.snapshots import (
    MemorySnapshotStore,
    RedisSnapshotStore,
    Snapshot,
    SnapshotStore,
)

__all__ = [
    "MemorySnapshotStore",
    "PolledSource",
    "PolledSources",
    "RedisSnapshotStore",
    "Snapshot",
    "SnapshotStore",
    "auth_headers",
]

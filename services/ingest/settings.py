"""Settings of the ingest service (SIGNALOPS_ environment variables)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import Field

from libs.common.settings import Settings


class IngestSettings(Settings):
    """The shared settings plus the limits of one HTTP request."""

    max_batch: int = Field(5000, ge=1, description="Most records in one request (else 413).")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body in bytes (else 413)."
    )
    max_record_bytes: int = Field(
        64 * 1024, ge=256, description="Largest single record; bigger ones are rejected."
    )
    dead_letter_max_bytes: int = Field(
        512 * 1024,
        ge=1024,
        description="Original bytes kept in one dead letter; a larger non-JSON body is "
        "truncated so the dead letter stays under the broker's message size limit.",
    )
    max_concurrent_requests: int = Field(
        16,
        ge=1,
        description="Most POSTs served at once; more are answered 503 with Retry-After before "
        "their body is read, so bodies in memory stay under this x max_body_bytes.",
    )
    consumer_group: str = "ingest"
    # ---- schema drift and lineage (services/ingest/drift_log.py, core/schema_drift.py) ----
    schema_event_interval_s: float = Field(
        60.0,
        gt=0,
        description="Least time between two schema.events of the same source, kind and "
        "field (the first sighting is always reported).",
    )
    build_version: str | None = Field(
        None,
        max_length=64,
        description="Build stamped on every accepted signal as ingest_version; default the "
        "installed signalops package's version.",
    )

    @property
    def ingest_version(self) -> str:
        return self.build_version or package_version()

    # ---- outage spool (services/ingest/spool.py) ----
    spool_dir: Path | None = Field(
        None,
        description="Where accepted records wait while the broker is down; "
        "default <data_dir>/spool.",
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=4096,
        description="Spooled bytes beyond which HTTP push answers 503 with Retry-After.",
    )
    spool_segment_bytes: int = Field(
        16 * 1024 * 1024, ge=4096, description="Size at which a spool segment file is rotated."
    )
    spool_publish_timeout_s: float = Field(
        2.0, gt=0, description="A publish not acknowledged within this is spooled instead."
    )
    dedup_enabled: bool = Field(
        True, description="Drop records already accepted within the dedup window."
    )
    dedup_window_s: int = Field(
        3600,
        ge=1,
        description="How long an accepted record's id is remembered in Redis (about 100 "
        "bytes per record: size Redis for window x rate). An hour covers client retries; "
        "a day at 20,000 records/s would need about 170 GB.",
    )
    dedup_redis_url: str | None = Field(
        None, description="Redis of the dedup window and replay ledger; default redis_url."
    )
    dedup_timeout_s: float = Field(
        0.25, gt=0, description="Longest wait for Redis per batch; then fail open (unchecked)."
    )
    dlq_page_size: int = Field(
        1000, ge=1, le=10000, description="Most dead letters one admin listing page returns."
    )
    dlq_replayed_ttl_s: int = Field(
        90 * 86400,
        ge=3600,
        description="How long the ids of replayed dead letters are kept (never replayed twice).",
    )


def package_version() -> str:
    """The installed signalops package's version ("unknown" when run from a bare tree)."""
    try:
        return version("signalops")
    except PackageNotFoundError:
        return "unknown"

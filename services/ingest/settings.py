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
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for a request's body once its headers arrived; a slower "
        "one is answered 408 and frees its slot under max_concurrent_requests.",
    )
    consumer_group: str = "ingest"
    raw_max_records: int = Field(
        2000,
        ge=1,
        le=20000,
        description="Most signals.raw records validated and published as one batch: each "
        "batch waits on the broker and Redis a few times, so larger batches move more "
        "records per wait.",
    )
    # ---- worker processes (services/ingest/workers.py) ----
    ingest_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Ingest processes on this machine sharing ingest_port (one core each); "
        "they split signals.raw's partitions in one consumer group.",
    )
    ingest_worker_index: int | None = Field(
        None, ge=0, description="Set by the parent for each worker; worker 0 polls the sources."
    )
    ingest_worker_ports_from: int = Field(
        8140,
        description="With workers: worker i serves /metrics, /healthz and /readyz on this + i "
        "(ingest_port reaches whichever worker accepts the connection).",
    )
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
    def polls_sources(self) -> bool:
        """Whether this process polls the polled sources: one process per machine does."""
        return not self.ingest_worker_index

    @property
    def spool_directory(self) -> Path:
        """This process's spool: worker 0 (or the only process) uses the configured one, so
        turning workers on keeps a spool that is already there; worker i uses worker-<i>
        inside it."""
        base = self.spool_dir or self.data_dir / "spool"
        return base / f"worker-{self.ingest_worker_index}" if self.ingest_worker_index else base

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

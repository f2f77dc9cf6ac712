"""Settings of the ingest service (SIGNALOPS_ environment variables)."""

from __future__ import annotations

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
    consumer_group: str = "ingest"

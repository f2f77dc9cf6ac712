"""Signals: what sources report about entities (signals.raw, signals.valid)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import Field, field_serializer, model_validator

from libs.common.schemas.base import Message, UtcDatetime, as_utc, with_content_id

FieldValue = float | int | bool | str | None


class Signal(Message):
    """One observation of one entity by one source.

    `schema_version` is the version of the source's field schema; `event_id` is
    derived from the content when absent, so a resent record is a duplicate.
    `ingested_at` is lineage set by ingest when it accepts the record (issue 7): a
    client's value is overwritten, and it is not part of the content-derived id.
    `stale` marks a polled source's cached snapshot re-emitted while the source is
    down (issue 9), `snapshot_at` the time of that snapshot's poll: lineage set by
    ingest only, outside the content-derived id (a re-emission keeps the record's id).
    `late` marks an event older than its source's allowed lateness accepted under
    `late_policy: accept_flagged`, `ingest_version` the build of ingest that accepted
    it: lineage too, set by ingest only and outside the id.
    """

    source: str = Field(min_length=1, max_length=64, examples=["sensors"])
    entity_id: str = Field(min_length=1, max_length=256, examples=["device-42"])
    fields: dict[str, FieldValue] = Field(examples=[{"temperature": 71.3, "status": "ok"}])
    schema_version: int = Field(1, ge=1)
    event_id: str = Field("", max_length=128)
    ingested_at: UtcDatetime | None = Field(None, examples=["2026-11-22T10:00:01Z"])
    stale: bool = False
    late: bool = False
    ingest_version: str | None = Field(None, max_length=64, examples=["0.1.0"])
    snapshot_at: UtcDatetime | None = Field(None, examples=["2026-11-22T09:59:30Z"])

    @model_validator(mode="before")
    @classmethod
    def _derive_event_id(cls, data: Any) -> Any:
        return with_content_id(
            data,
            ("source", "entity_id", "event_time", "fields", "schema_version"),
            schema_version=1,
        )

    @field_serializer("ingested_at", "snapshot_at")
    def _iso_ingested(self, v: datetime | None) -> str | None:
        return None if v is None else v.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def to_bytes(self) -> bytes:
        """What `model_dump_json` writes, byte for byte, written by orjson: ingest
        serialises every signal it accepts, and pydantic's serialiser calling back into
        Python for each time was 8% of ingest's samples (issue 9). orjson writes floats,
        integers and strings as pydantic-core does; anything it refuses (an integer over
        64 bits) goes the pydantic way. tests/unit/ingest/test_ingest_validate_once.py
        pins the equality.
        """
        try:
            # orjson writes a UTC time as isoformat does, with "Z" (OPT_UTC_Z); pinned
            # over years 1 to 9999 by test_signal_bytes_are_pydantics.
            return orjson.dumps(
                {
                    "message_version": self.message_version,
                    "event_id": self.event_id,
                    "event_time": as_utc(self.event_time),
                    "produced_at": as_utc(self.produced_at),
                    "source": self.source,
                    "entity_id": self.entity_id,
                    "fields": self.fields,
                    "schema_version": self.schema_version,
                    "ingested_at": None if self.ingested_at is None else as_utc(self.ingested_at),
                    "stale": self.stale,
                    "late": self.late,
                    "ingest_version": self.ingest_version,
                    "snapshot_at": None if self.snapshot_at is None else as_utc(self.snapshot_at),
                },
                option=orjson.OPT_UTC_Z,
            )
        except orjson.JSONEncodeError:
            return super().to_bytes()

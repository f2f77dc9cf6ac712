"""Schema drift of a source: what ingest saw arrive against the registered field schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, Field, field_serializer

from libs.common.schemas.base import Message

DriftKind = Literal[
    "unknown_field",
    "missing_optional",
    "type_coerced",
    "missing_required",
    "type_changed",
    "new_version",
]


class SchemaDriftDetected(Message):
    """One kind of drift of one field of one source (topic `schema.events`, keyed by source).

    Published at the first sighting of (source, kind, field) and then at most once per
    interval while it goes on (ingest's SIGNALOPS_SCHEMA_EVENT_INTERVAL_S); `count`
    is the sightings since the previous event, `total` since ingest started.
    `breaking` changes were dead-lettered (quarantined); additive ones were accepted.
    """

    source: str = Field(examples=["sensors"])
    source_version: int = Field(ge=1, description="The registered schema version.")
    kind: DriftKind
    field: str = Field(examples=["humidity", "schema_version"])
    observed: str = Field(
        examples=["a number", "absent", "2"], description="JSON type, or the version seen."
    )
    breaking: bool
    count: int = Field(ge=1)
    total: int = Field(ge=1)
    first_seen: AwareDatetime
    last_seen: AwareDatetime

    @field_serializer("first_seen", "last_seen")
    def _iso_seen(self, v: datetime) -> str:
        return v.astimezone(UTC).isoformat().replace("+00:00", "Z")

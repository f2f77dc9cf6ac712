"""The envelope every Kafka message shares: versions, ids and the two times."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


# The encoder `json.dumps` would build from these arguments on every call, built once
# (ingest hashes every record; issue 9's profile): the same class and options, so the
# same text and ids.
_ID_ENCODER = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))


def stable_id(*parts: Any) -> str:
    """A deterministic id from content, so a replayed record keeps its id."""
    blob = _ID_ENCODER.encode(parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _has_utc_form(v: datetime) -> datetime:
    # Year 1 with a positive offset, or 9999 with a negative one, has no UTC form: it
    # passed validation and then failed serialisation (found by fuzzing ingest, issue 9).
    # Only those two years can overflow; the year test keeps the hot path cheap.
    if v.year in (1, 9999):
        try:
            v.astimezone(UTC)
        except OverflowError:
            raise ValueError("time has no UTC form (outside years 1 to 9999 in UTC)") from None
    return v


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_has_utc_form)]
"""An aware time that can be written in UTC, as every message serialises its times."""

_AWARE = TypeAdapter(UtcDatetime)


def canonical_time(value: Any) -> str:
    """`value` as the UTC text every message serialises (`...Z`, no zero fraction) when
    it parses as an aware time the way the schemas parse it; else its text form (the
    record fails validation anyway, and its id must still be stable).
    """
    try:
        return iso_utc(_AWARE.validate_python(value))
    except ValidationError:
        return str(value)


def as_utc(v: datetime) -> datetime:
    """`v` with the standard library's UTC as its zone. Times parsed by pydantic carry
    its own `TzInfo`, which `isoformat` calls back into for every offset: writing such a
    time cost about 2 µs, a tenth of ingest's samples (issue 9)."""
    return v if v.tzinfo is UTC else v.astimezone(UTC)


def iso_utc(v: datetime) -> str:
    # isoformat of a UTC time always ends in "+00:00".
    return as_utc(v).isoformat()[:-6] + "Z"


def with_content_id(
    data: Any, fields: tuple[str, ...], *, prefix: tuple[str, ...] = (), **defaults: Any
) -> Any:
    """`data` (a model's raw input) with `event_id` derived from `fields` when absent.

    The one rule for content-derived ids of signals and outcomes: a record resent
    without an id gets the same id, so downstream deduplicates it. `event_time` is
    hashed as its UTC instant (`canonical_time`), so a retry that writes the same
    instant differently ("Z", "+01:00", ".000") gets the same id (issue 9); a missing
    field takes its default from `defaults`.
    """
    if not isinstance(data, dict) or data.get("event_id"):
        return data
    data = dict(data)
    values = [
        canonical_time(data.get(f)) if f == "event_time" else data.get(f, defaults.get(f))
        for f in fields
    ]
    data["event_id"] = stable_id(*prefix, *values)
    return data


class Message(BaseModel):
    """Base of every topic payload.

    Within one `message_version` only optional fields are added; a breaking change
    gets a new class and a `.v2` topic (STYLE.md section 4).
    """

    model_config = ConfigDict(extra="forbid")
    MESSAGE_VERSION: ClassVar[int] = 1

    message_version: int = Field(1, ge=1)
    event_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    event_time: UtcDatetime = Field(default_factory=utcnow)
    produced_at: UtcDatetime = Field(default_factory=utcnow)

    @field_serializer("event_time", "produced_at")
    def _iso(self, v: datetime) -> str:
        return iso_utc(v)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.model_validate_json(data)

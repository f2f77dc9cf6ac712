"""The envelope every Kafka message shares: versions, ids and the two times."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def stable_id(*parts: Any) -> str:
    """A deterministic id from content, so a replayed record keeps its id."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def with_content_id(
    data: Any, fields: tuple[str, ...], *, prefix: tuple[str, ...] = (), **defaults: Any
) -> Any:
    """`data` (a model's raw input) with `event_id` derived from `fields` when absent.

    The one rule for content-derived ids of signals and outcomes: a record resent
    without an id gets the same id, so downstream deduplicates it. `event_time` is
    hashed as its text form; a missing field takes its default from `defaults`.
    """
    if not isinstance(data, dict) or data.get("event_id"):
        return data
    data = dict(data)
    values = [
        str(data.get(f)) if f == "event_time" else data.get(f, defaults.get(f)) for f in fields
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
    event_time: AwareDatetime = Field(default_factory=utcnow)
    produced_at: AwareDatetime = Field(default_factory=utcnow)

    @field_serializer("event_time", "produced_at")
    def _iso(self, v: datetime) -> str:
        return v.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.model_validate_json(data)

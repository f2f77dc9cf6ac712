"""Dead letters: records that could not be processed, with reason and original bytes."""

from __future__ import annotations

import base64

from pydantic import Field

from libs.common.schemas.base import Message


class DeadLetter(Message):
    """A rejected record; `original_b64` holds its bytes exactly as received.

    Built only by libs.common.clients.kafka.dead_letters.dead_letter, which derives
    the event id from the original record.
    """

    stage: str = Field(examples=["ingest"])
    source: str = Field(examples=["sensors", "http"])
    reason: str = Field(examples=["invalid_field"])
    detail: str = ""
    errors: list[str] = Field(
        default_factory=list,
        description="Every validation error found (detail explains the first ones).",
        examples=[["fields.temperature: Input should be a valid number (got 'hot')"]],
    )
    original_topic: str | None = None
    original_key: str | None = None
    original_b64: str

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)

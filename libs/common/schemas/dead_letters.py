"""Dead letters: records that could not be processed, with reason and original bytes."""

from __future__ import annotations

import base64

from pydantic import Field

from libs.common.schemas.base import Message


class DeadLetter(Message):
    """A rejected record; `original_b64` holds its bytes exactly as received."""

    stage: str = Field(examples=["ingest"])
    source: str = Field(examples=["sensors", "http"])
    reason: str = Field(examples=["invalid_field"])
    detail: str = ""
    original_topic: str | None = None
    original_key: str | None = None
    original_b64: str

    @classmethod
    def of(
        cls,
        original: bytes,
        *,
        stage: str,
        source: str,
        reason: str,
        detail: str = "",
        topic: str | None = None,
        key: str | None = None,
        event_id: str | None = None,
    ) -> DeadLetter:
        """Build one; `event_id` should be derived from the original record (see
        libs.common.clients.kafka.dead_letters), so rebuilding it gives the same id.
        """
        extra = {"event_id": event_id} if event_id else {}
        return cls(
            **extra,
            stage=stage,
            source=source or "unknown",
            reason=reason,
            detail=detail[:2000],
            original_topic=topic,
            original_key=key,
            original_b64=base64.b64encode(original).decode(),
        )

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)

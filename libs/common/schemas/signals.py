"""Signals: what sources report about entities (signals.raw, signals.valid)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from libs.common.schemas.base import Message, with_content_id

FieldValue = float | int | bool | str | None


class Signal(Message):
    """One observation of one entity by one source.

    `schema_version` is the version of the source's field schema; `event_id` is
    derived from the content when absent, so a resent record is a duplicate.
    """

    source: str = Field(min_length=1, max_length=64, examples=["sensors"])
    entity_id: str = Field(min_length=1, max_length=256, examples=["device-42"])
    fields: dict[str, FieldValue] = Field(examples=[{"temperature": 71.3, "status": "ok"}])
    schema_version: int = Field(1, ge=1)
    event_id: str = Field("", max_length=128)

    @model_validator(mode="before")
    @classmethod
    def _derive_event_id(cls, data: Any) -> Any:
        return with_content_id(
            data,
            ("source", "entity_id", "event_time", "fields", "schema_version"),
            schema_version=1,
        )

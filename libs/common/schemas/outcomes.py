"""Outcomes: labels that arrive late and join features as of prediction time."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from libs.common.schemas.base import Message, with_content_id


class Outcome(Message):
    """The observed label of an entity for a model.

    Joined to features as of the named prediction's time, else as of
    `event_time` minus the model's label horizon.
    """

    model: str = Field(min_length=1, max_length=64, examples=["default"])
    entity_id: str = Field(min_length=1, max_length=256)
    label: float = Field(examples=[1])
    prediction_id: str | None = None
    event_id: str = Field("", max_length=128)

    @model_validator(mode="before")
    @classmethod
    def _derive_event_id(cls, data: Any) -> Any:
        return with_content_id(
            data,
            ("model", "entity_id", "event_time", "label", "prediction_id"),
            prefix=("outcome",),
        )

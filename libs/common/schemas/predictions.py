"""Predictions served, logged for the drift monitor and for joining labels."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from libs.common.schemas.base import Message

Variant = Literal["champion", "challenger", "fallback"]


class ModelRef(BaseModel):
    name: str
    version: str
    variant: Variant


class PredictionMade(Message):
    """A score served to a client; `event_id` is the prediction id."""

    entity_id: str
    model: ModelRef
    score: float
    # The model inputs used: numbers, and str for categorical features (`last` of a str
    # field); None when missing. Adding str is an optional widening within version 1.
    features: dict[str, float | str | None] = Field(default_factory=dict)
    degraded: bool = False
    reasons: list[str] = Field(default_factory=list)
    # A shadow score: the challenger scored the row, the client never saw it. An
    # optional field within version 1; consumers that judge answers skip these.
    shadow: bool = False

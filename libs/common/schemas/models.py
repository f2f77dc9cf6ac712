"""Facts about models: drift detected, versions registered, promoted, rolled back."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.common.schemas.base import Message


class DriftDetected(Message):
    model: str
    version: str | None = None
    feature: str
    statistic: str = Field(examples=["psi"])
    value: float
    threshold: float


class ModelChanged(Message):
    """A registry change serve must follow; `alias` is what now points at `version`."""

    kind: Literal["registered", "promoted", "rolled_back"]
    model: str
    version: str
    alias: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str = ""

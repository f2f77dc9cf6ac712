"""Requests (imperative) that services act on."""

from __future__ import annotations

from pydantic import AwareDatetime, Field

from libs.common.schemas.base import Message


class RetrainModel(Message):
    """A request to train `model` now (published by `signalops retrain` or any tool;
    its JSON schema is `RetrainModel.model_json_schema()`, printed by
    `signalops retrain --schema`).
    """

    model: str = Field(min_length=1, max_length=64)
    reason: str = Field("", max_length=2000)
    requested_by: str = "cli"
    since: AwareDatetime | None = Field(
        None, description="Train only on labelled rows as of this time or later."
    )

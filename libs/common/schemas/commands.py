"""Requests (imperative) that services act on."""

from __future__ import annotations

from pydantic import Field

from libs.common.schemas.base import Message


class RetrainModel(Message):
    model: str = Field(min_length=1, max_length=64)
    reason: str = Field("", max_length=2000)
    requested_by: str = "cli"

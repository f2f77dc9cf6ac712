"""Facts about models: drift detected, versions registered, promoted, rolled back."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from libs.common.schemas.base import Message


class DriftDetected(Message):
    """One drift of one model version, published once (the monitor debounces).

    `kind` says what drifted: a feature's distribution, the model's scores, or its
    performance on late labels (a concept drift). `change_point` estimates when the
    change began; retraining can train on labels since then.
    """

    model: str
    version: str | None = None
    kind: Literal["feature", "prediction", "performance"] = "feature"
    feature: str = Field(examples=["device_stats.temperature_mean_1h", "log_loss"])
    statistic: str = Field(examples=["psi", "mann_whitney_log_loss"])
    value: float
    threshold: float
    p_value: float | None = None
    window: int | None = Field(None, description="Values (or labels) the test looked at.")
    change_point: AwareDatetime | None = None


class ModelChanged(Message):
    """A registry change serve must follow; `alias` is what now points at `version`.

    `traffic_changed`: a model's challenger fraction or shadow mode was set.
    """

    kind: Literal["registered", "promoted", "rolled_back", "traffic_changed"]
    model: str
    version: str
    alias: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str = ""

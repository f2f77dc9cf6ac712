"""The HTTP contract of the prediction API (DESIGN.md "Wire format"), as pydantic models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.common.schemas import ModelRef

FeatureValue = Annotated[float, Field(allow_inf_nan=False)] | None


class PredictRequest(BaseModel):
    """One entity to score; `features` supplies or overrides 'view.feature' values."""

    model_config = ConfigDict(extra="forbid")

    entity_id: str = Field(min_length=1, max_length=256, examples=["device-42"])
    model: str | None = Field(None, min_length=1, max_length=64, examples=["default"])
    features: dict[str, FeatureValue] | None = Field(
        None, max_length=1024, examples=[{"device_stats.temperature_last": 71.3}]
    )

    @field_validator("entity_id", "model")
    @classmethod
    def _encodable(cls, v: str | None) -> str | None:
        # JSON allows lone surrogates, which no Redis key or Kafka message can carry.
        if v is not None:
            try:
                v.encode()
            except UnicodeEncodeError:
                raise ValueError("must be valid UTF-8 text (it holds a lone surrogate)") from None
        return v


class BatchPredictRequest(BaseModel):
    """Many entities in one call: one online-store round trip, one predict per model."""

    model_config = ConfigDict(extra="forbid")

    requests: list[PredictRequest] = Field(min_length=1)


class PredictionAnswer(BaseModel):
    """What a client gets back; `contributions` only with `?explain=true`."""

    prediction_id: str
    entity_id: str
    score: float
    model: ModelRef
    degraded: bool
    reasons: list[str]
    feature_freshness_s: float | None
    latency_ms: float
    contributions: dict[str, float] | None = None


class ServedModelInfo(BaseModel):
    name: str
    version: str | None
    variant: str
    loaded_at: str | None = None


class ModelsView(BaseModel):
    """What serves now per model, and the share of entities each variant gets."""

    models: list[ServedModelInfo]
    traffic: dict[str, dict[str, float]]

"""The HTTP contract of the prediction and feature-read API (DESIGN.md "Wire format")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from libs.common.schemas import ModelRef

FeatureValue = Annotated[float, Field(allow_inf_nan=False)] | None


def _utf8(v: str | None) -> str | None:
    # JSON allows lone surrogates, which no Redis key or Kafka message can carry.
    if v is not None:
        try:
            v.encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid UTF-8 text (it holds a lone surrogate)") from None
    return v


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
        return _utf8(v)


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
    """What serves now per model, the share of entities each variant answers, and
    per model the configured challenger fraction and whether shadow mode is on."""

    models: list[ServedModelInfo]
    traffic: dict[str, dict[str, float]]
    challenger_fraction: dict[str, float] = Field(default_factory=dict)
    shadow: dict[str, bool] = Field(default_factory=dict)


# A stored feature value as read back: numbers, categorical strings (the `last` of a
# str field) and null for "no value". Strict members so a string like "7" stays a string.
OnlineValue = StrictFloat | StrictInt | StrictStr | None


class ViewFeatures(BaseModel):
    """One view's stored vector for an entity, with how old it is."""

    version: int = Field(description="The view version the vector was computed under.")
    values: dict[str, OnlineValue] = Field(examples=[{"temperature_last": 71.3}])
    as_of: datetime = Field(description="Event time the vector holds as of (UTC).")
    updated_at: datetime = Field(description="When the features service wrote it (UTC).")
    freshness_s: float = Field(ge=0, description="Seconds since the write (now - updated_at).")
    age_s: float = Field(ge=0, description="Seconds since the event time (now - as_of).")


class EntityFeatures(BaseModel):
    """What the online store holds for one entity, per requested view."""

    entity_id: str
    found: bool = Field(description="True when at least one requested view holds a vector.")
    views: dict[str, ViewFeatures]
    missing_views: list[str] = Field(description="Requested views without a vector.")


class FeaturesBatchRequest(BaseModel):
    """Many entities read in one online-store round trip."""

    model_config = ConfigDict(extra="forbid")

    entity_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, examples=[["device-42", "device-43"]]
    )

    @field_validator("entity_ids")
    @classmethod
    def _encodable(cls, v: list[str]) -> list[str]:
        for entity_id in v:
            _utf8(entity_id)
        return v


class FeaturesBatchAnswer(BaseModel):
    """One answer per requested entity, in request order."""

    entities: list[EntityFeatures]


class ErrorAnswer(BaseModel):
    """The body of every 4xx/5xx answer: a machine-readable code and a message."""

    error: str = Field(examples=["unknown_view"])
    message: str

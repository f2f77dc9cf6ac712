"""The model card stored with each version: what it learned from, how it scored, why.

Built from values at training time (pure), stored as `model_card.json` next to the
model and printed by `signalops models card NAME VERSION`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.retrain.core.drift.reference import DriftReference
from services.retrain.core.evaluation import HoldoutEvaluation
from services.retrain.core.promotion import ChampionScore, GateStatus, PromotionDecision

CARD_SCHEMA_VERSION = 1


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataWindow(_Card):
    """The rows a version was trained and measured on."""

    policy: str = Field("", description="The training window policy and what it selected.")
    since: datetime | None = Field(
        description="The run's change point (the policy decides what it bounds); None: none."
    )
    rows: int
    train_rows: int
    holdout_rows: int
    first_row: datetime | None = Field(description="As-of time of the oldest row.")
    last_row: datetime | None = Field(description="As-of time of the newest row.")
    holdout_from: datetime | None = Field(description="As-of time of the oldest holdout row.")
    bootstrap_history: bool = Field(description="Synthetic bootstrap rows were included.")


class Metrics(_Card):
    """One model's figures on the candidate's holdout (None stands for undefined)."""

    auc: float | None
    log_loss: float | None
    calibration_error: float | None
    rows: int

    @field_validator("auc", "log_loss", "calibration_error", mode="before")
    @classmethod
    def _nan_is_none(cls, v: float | None) -> float | None:
        # JSON has no NaN; an undefined AUC (one-class holdout) is stored as null.
        return None if v is None or math.isnan(v) else float(v)


class SliceMetrics(_Card):
    """AUC of the candidate and of the champion on one slice of the holdout."""

    feature: str
    slice: str
    rows: int
    candidate_auc: float | None
    champion_auc: float | None

    @field_validator("candidate_auc", "champion_auc", mode="before")
    @classmethod
    def _nan_is_none(cls, v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else float(v)


class ReferenceColumn(_Card):
    """One column of the drift reference stored with the version."""

    column: str
    sample_size: int = Field(description="Values kept for the KS test (at most 2,000).")
    bins: int = Field(description="Quantile bins for PSI.")
    missing_share: float


class Importance(_Card):
    """A feature's share of the booster's total split gain."""

    feature: str
    gain: float


class CompanionSummary(_Card):
    """The version's companion (serve's simpler fallback) on the same holdout."""

    features: list[str]
    selection: str
    trees: int
    metrics: Metrics


class Gate(_Card):
    """One promotion check and its verdict."""

    name: str
    status: GateStatus
    detail: str


class ModelCard(_Card):
    """Everything worth knowing about one registered version, as stored with it.

    `version` is filled in once the registry numbered the version (`for_version`,
    through `register(version_files=...)`); cards stored before that hold None, and
    readers fill it in from the version they read.
    """

    schema_version: int = CARD_SCHEMA_VERSION
    model: str
    version: str | None = None
    created: datetime
    reason: str
    data: DataWindow
    candidate: Metrics
    champion_version: str | None
    champion: Metrics | None = Field(description="The champion on the same holdout.")
    champion_note: str | None = Field(description="Why the champion was not compared.")
    slices: list[SliceMetrics]
    drift_reference: list[ReferenceColumn]
    feature_importance: list[Importance]
    promoted: bool
    gates: list[Gate]
    timings: dict[str, float] = Field(description="Seconds per stage up to registration.")
    companion: CompanionSummary | None = Field(
        None, description="The companion model; None: the version has none (or predates them)."
    )

    def for_version(self, version: str) -> ModelCard:
        """This card with the version number it was read from."""
        return self.model_copy(update={"version": version})


def _time(ts: float | None) -> datetime | None:
    return None if ts is None or math.isnan(ts) else datetime.fromtimestamp(ts, UTC)


def data_window(
    times: np.ndarray,
    *,
    train_rows: int,
    since: float | None,
    bootstrap_history: bool,
    policy: str = "",
) -> DataWindow:
    """The data window of a run from its rows' as-of times (epoch seconds).

    Args:
        times: as-of times of every row (train and holdout).
        train_rows: how many of the oldest rows were trained on; the rest is holdout.
        since: the run's change point, None when it has none.
        bootstrap_history: whether synthetic bootstrap rows were included.
        policy: the window policy's description of what it selected.
    """
    ordered = np.sort(np.asarray(times, dtype=np.float64), kind="stable")
    n = len(ordered)
    return DataWindow(
        policy=policy,
        since=_time(since),
        rows=n,
        train_rows=train_rows,
        holdout_rows=n - train_rows,
        first_row=_time(float(ordered[0])) if n else None,
        last_row=_time(float(ordered[-1])) if n else None,
        holdout_from=_time(float(ordered[train_rows])) if train_rows < n else None,
        bootstrap_history=bootstrap_history,
    )


def gain_importance(booster: lgb.Booster, names: Mapping[str, str]) -> dict[str, float]:
    """Each feature's share of total split gain, largest first.

    Args:
        booster: the trained booster.
        names: booster column -> the name to show ('view.feature').

    Returns:
        Shares summing to 1 (all 0 for a booster that never split).
    """
    gains = booster.feature_importance(importance_type="gain")
    total = float(np.sum(gains))
    shares = {
        names.get(col, col): (float(g) / total if total > 0 else 0.0)
        for col, g in zip(booster.feature_name(), gains, strict=True)
    }
    return dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))


def _metrics(ev: HoldoutEvaluation) -> Metrics:
    return Metrics.model_validate(
        {
            "auc": ev.auc,
            "log_loss": ev.log_loss,
            "calibration_error": ev.calibration_error,
            "rows": ev.rows,
        }
    )


def build_model_card(
    *,
    model: str,
    reason: str,
    window: DataWindow,
    candidate: HoldoutEvaluation,
    champion: ChampionScore,
    decision: PromotionDecision,
    reference: DriftReference,
    importance: Mapping[str, float],
    timings: Mapping[str, float],
    created: datetime | None = None,
    companion: CompanionSummary | None = None,
) -> ModelCard:
    """Assemble the card of a version about to be registered.

    Args:
        model: model name.
        reason: why the run happened.
        window: its data window (`data_window`).
        candidate: the new version's holdout evaluation.
        champion: the champion scored on the same holdout (or why it was not).
        decision: the promotion decision with its checks.
        reference: the drift reference stored with the version.
        importance: feature -> normalised gain (`gain_importance`).
        timings: seconds per stage so far.
        created: when; now when None.
        companion: the companion trained with the version, if any.

    Returns:
        The card; `model_dump_json()` is what the registry stores.
    """
    ev = champion.evaluation
    theirs = {s.key: s.auc for s in ev.slices} if ev is not None else {}
    return ModelCard(
        model=model,
        created=created or datetime.now(UTC),
        reason=reason,
        data=window,
        candidate=_metrics(candidate),
        champion_version=champion.version,
        champion=_metrics(ev) if ev is not None else None,
        champion_note=None if ev is not None else champion.note,
        slices=[
            SliceMetrics.model_validate(
                {
                    "feature": s.feature,
                    "slice": s.label,
                    "rows": s.rows,
                    "candidate_auc": s.auc,
                    "champion_auc": theirs.get(s.key),
                }
            )
            for s in candidate.slices
        ],
        drift_reference=[
            ReferenceColumn(
                column=name,
                sample_size=len(ref.sample),
                bins=len(ref.shares),
                missing_share=ref.missing,
            )
            for name, ref in reference.columns.items()
        ],
        feature_importance=[Importance(feature=f, gain=g) for f, g in importance.items()],
        promoted=decision.promote,
        gates=[Gate(name=c.name, status=c.status, detail=c.detail) for c in decision.checks],
        timings={k: round(float(v), 4) for k, v in timings.items()},
        companion=companion,
    )

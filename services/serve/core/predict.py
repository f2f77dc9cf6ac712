"""Scoring: a Predictor around a LightGBM booster, and the answers built from it.

Pure: values in, values out. Fetching features, loading models and publishing the
prediction log happen in the adapters; this module decides what the answer says.

Categorical inputs (`last` of a str field) stay str in a `FeatureRow` and in the
prediction log; the `Predictor` encodes them through its version's `CategoryEncoding`
(stored with the version as categories.json). A category unseen at training (or one
the encoding does not hold) is encoded as NaN: the model still answers, treating it
as missing, and the answer is not degraded for it. The encoding of a version never
changes; a retrain learns new categories.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Protocol

import lightgbm as lgb
import numpy as np

from libs.common.definitions import ModelDefinition
from libs.common.features import CategoryEncoding, FeatureValue, input_values, model_columns
from libs.common.schemas import ModelRef, PredictionMade, Variant
from services.serve.errors import InvalidFeatures, ModelMismatch
from services.serve.schemas import PredictionAnswer

# Why an answer is degraded; clients and the drift monitor read these names.
NO_MODEL = "no_model"
NO_FEATURES = "no_features"
PARTIAL_FEATURES = "partial_features"
# "stale_source:<name>": a polled source's inputs come from its cached snapshot (issue 9).
STALE_SOURCE = "stale_source"
FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
MODEL_FAILED = "model_failed"  # the main model raised
MODEL_TIMEOUT = "model_timeout"  # the main model did not answer within its budget
COMPANION = "companion"  # the version's companion (simpler model) answered
COMPANION_FAILED = "companion_failed"  # ...or could not either: the constant prior

BIAS = "bias"  # key of the expected value in contributions; no 'view.feature' can clash


Rows = Sequence[Sequence[float | str]] | np.ndarray
"""Model input rows in `columns` order: numbers, and str for categorical inputs (a numeric
ndarray is taken as already encoded)."""


class Predictor:
    """A LightGBM booster with its input columns and category encoding; rows are in
    `columns` order, categories as str."""

    def __init__(
        self,
        booster: lgb.Booster,
        columns: Sequence[str],
        encoding: CategoryEncoding | None = None,
    ) -> None:
        self._booster = booster
        self.columns = list(columns)
        self.encoding = encoding or CategoryEncoding()

    @classmethod
    def from_booster(
        cls,
        booster: lgb.Booster,
        columns: Sequence[str] | None = None,
        encoding: CategoryEncoding | None = None,
        *,
        categorical: Sequence[str] | None = None,
    ) -> Predictor:
        """Wrap `booster`; with `columns`, check that it was trained on exactly those.

        Args:
            booster: the version's booster.
            columns: the definitions' input columns, if they are to be checked.
            encoding: the version's category encoding (None: no categorical inputs).
            categorical: the definitions' categorical columns, if they are to be checked.

        Raises:
            ModelMismatch: the booster's feature names differ from `columns`, or the
                encoding's categorical columns from `categorical`.
        """
        names = list(booster.feature_name())
        if columns is not None and names != list(columns):
            raise ModelMismatch(
                f"booster inputs {names} differ from the definitions' {list(columns)}; "
                "retrain the model with the current definitions file"
            )
        encoding = encoding or CategoryEncoding()
        if categorical is not None and set(encoding.columns) != set(categorical):
            raise ModelMismatch(
                f"the version encodes categories of {encoding.columns}, the definitions "
                f"make {list(categorical)} categorical; retrain the model with the current "
                "definitions file"
            )
        return cls(booster, names, encoding)

    @classmethod
    def for_model(cls, booster: lgb.Booster, model: ModelDefinition) -> Predictor:
        return cls.from_booster(booster, model_columns(model))

    def _matrix(self, rows: Rows) -> np.ndarray:
        x = self.encoding.encode_rows(rows, self.columns)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"rows must have shape (n, {len(self.columns)}), got {x.shape}")
        return x

    def predict(self, rows: Rows) -> np.ndarray:
        """Scores (probabilities for a binary objective); NaN means missing to LightGBM."""
        # One thread: single rows and small batches are faster without OpenMP fan-out.
        return np.asarray(self._booster.predict(self._matrix(rows), num_threads=1))

    def score(
        self, rows: Rows, names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[dict[str, float]] | None]:
        """Scores of `rows`, and their contributions keyed by `names` when names are given."""
        contribs = self.contributions(rows, names) if names is not None else None
        return self.predict(rows), contribs

    def raw_scores(self, rows: Rows) -> np.ndarray:
        return np.asarray(self._booster.predict(self._matrix(rows), raw_score=True, num_threads=1))

    def contributions(
        self, rows: Rows, names: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        """Per-row SHAP contributions (LightGBM pred_contrib), keyed by `names` plus 'bias'.

        The values of a row sum to its raw score (log-odds for a binary objective).
        """
        keys = [*(names or self.columns), BIAS]
        if len(keys) != len(self.columns) + 1:
            raise ValueError(f"need {len(self.columns)} names, got {len(keys) - 1}")
        contrib = np.asarray(
            self._booster.predict(self._matrix(rows), pred_contrib=True, num_threads=1)
        )
        return [dict(zip(keys, map(float, r), strict=True)) for r in contrib]


@dataclass
class PredictBudget:
    """How a version's main model is run against its time budget (`_score`).

    LightGBM cannot be interrupted, so a budget holds only for a predict run off the
    event loop; and a thread hop costs several times a one-row predict. So a version
    predicts inline once it has answered within its budget off the loop, and goes
    back off the loop (where the budget holds, and the companion answers past it)
    as soon as one predict exceeds it. A new version starts off the loop: it proves
    itself first. Shared by a version's champion and challenger entries.

    Attributes:
        inline: predict on the event loop (True) or in a thread under the budget.
        overdue: predicts still running past their budget; while there are
            `max_overdue` of them the companion answers at once, so a stuck model
            cannot take every worker thread.
    """

    inline: bool = False
    overdue: int = 0


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version; immutable, so a swap is one reference assignment.

    `companion` is the version's simpler model (few trees over a few robust inputs,
    stored with it as companion.lgb), None for a version trained without one.
    """

    name: str
    version: str
    variant: Variant
    predictor: Predictor
    loaded_at: datetime
    companion: Predictor | None = None
    budget: PredictBudget = field(default_factory=PredictBudget, compare=False)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, variant=self.variant)

    @cached_property
    def companion_index(self) -> list[int]:
        """Positions of the companion's inputs in the main model's input row."""
        if self.companion is None:
            return []
        return [self.predictor.columns.index(c) for c in self.companion.columns]


@dataclass(frozen=True)
class ModelSlot:
    """What serves one model now; a challenger exists only next to a champion."""

    champion: ServedModel | None = None
    challenger: ServedModel | None = None

    def pick(self, variant: Variant) -> ServedModel | None:
        if variant == "challenger" and self.challenger is not None:
            return self.challenger
        return self.champion


class VectorLike(Protocol):
    """A stored feature vector as the online store returns it (StoredVector)."""

    @property
    def values(self) -> Mapping[str, FeatureValue]: ...

    @property
    def updated_at(self) -> float: ...


@dataclass(frozen=True)
class FeatureRow:
    """A model input row and what the answer says about where it came from.

    `row` is in model input order, missing as NaN, categories as str (the serving
    version's Predictor encodes them); `features` is what the prediction log records:
    'view.feature' -> value, None when missing.
    """

    row: list[float | str]
    features: dict[str, float | str | None]
    freshness_s: float | None
    reasons: tuple[str, ...] = ()


def with_stale_sources(row: FeatureRow, sources: Sequence[str]) -> FeatureRow:
    """`row` with a `stale_source:<name>` reason per source of its inputs that is down
    and re-emitted from its cached snapshot (the answer is then degraded)."""
    if not sources:
        return row
    stale = tuple(f"{STALE_SOURCE}:{s}" for s in sources)
    return replace(row, reasons=row.reasons + stale)


def check_supplied(model: ModelDefinition, supplied: Mapping[str, object] | None) -> None:
    """Supplied features must be references the model uses.

    Raises:
        InvalidFeatures: naming the unknown references and the known ones.
    """
    if not supplied:
        return
    unknown = sorted(set(supplied) - set(model.features))
    if unknown:
        shown = ", ".join(repr(u[:80]) for u in unknown[:5])
        raise InvalidFeatures(
            f"model {model.name!r} has no feature {shown}; features are given as "
            f"'view.feature', one of {model.features}"
        )


def assemble_features(
    model: ModelDefinition,
    vectors: Mapping[str, VectorLike],
    supplied: Mapping[str, FeatureValue] | None,
    now: float,
) -> FeatureRow | None:
    """The input row of `model` from stored vectors, overlaid with supplied values.

    Args:
        model: the model definition (feature order).
        vectors: view name -> stored vector, for the views found in the store.
        supplied: 'view.feature' -> value from the request, overriding stored ones.
        now: epoch seconds; freshness is `now` minus the oldest vector's write time.

    Returns:
        None on cold start (nothing stored, nothing supplied); else the row, with
        PARTIAL_FEATURES when some feature came from neither source.
    """
    supplied = supplied or {}
    views: dict[str, dict[str, FeatureValue]] = {v: dict(vec.values) for v, vec in vectors.items()}
    for ref, value in supplied.items():
        view, _, feat = ref.partition(".")
        views.setdefault(view, {})[feat] = value
    available = {ref for ref in model.features if ref.partition(".")[0] in vectors} | set(supplied)
    if not available:
        return None
    row = input_values(model, views)
    features = {
        ref: (None if isinstance(v, float) and math.isnan(v) else v)
        for ref, v in zip(model.features, row, strict=True)
    }
    freshness = max((now - vec.updated_at for vec in vectors.values()), default=None)
    reasons = (PARTIAL_FEATURES,) if len(available) < len(model.features) else ()
    return FeatureRow(row, features, None if freshness is None else max(freshness, 0.0), reasons)


def fallback_answer(
    *,
    prediction_id: str,
    entity_id: str,
    model: ModelDefinition,
    version: str | None,
    reasons: Sequence[str],
    freshness_s: float | None = None,
    latency_ms: float = 0.0,
    explain: bool = False,
) -> PredictionAnswer:
    """The definitions' fallback score, degraded, naming why the model did not answer.

    `version` is the champion that would have answered, 'none' when none is loaded.
    """
    return PredictionAnswer(
        prediction_id=prediction_id,
        entity_id=entity_id,
        score=model.fallback.score,
        model=ModelRef(name=model.name, version=version or "none", variant="fallback"),
        degraded=True,
        reasons=list(reasons),
        feature_freshness_s=freshness_s,
        latency_ms=latency_ms,
        contributions={} if explain else None,
    )


def scored_answer(
    *,
    prediction_id: str,
    entity_id: str,
    served: ServedModel,
    score: float,
    features: FeatureRow,
    latency_ms: float = 0.0,
    contributions: dict[str, float] | None = None,
) -> PredictionAnswer:
    """The model's own score; degraded only when some inputs were missing."""
    return PredictionAnswer(
        prediction_id=prediction_id,
        entity_id=entity_id,
        score=float(score),
        model=served.ref,
        degraded=bool(features.reasons),
        reasons=list(features.reasons),
        feature_freshness_s=features.freshness_s,
        latency_ms=latency_ms,
        contributions=contributions,
    )


def prediction_event(
    answer: PredictionAnswer, features: Mapping[str, float | str | None], at: datetime
) -> PredictionMade:
    """The prediction-log record of an answer; its event id is the prediction id.

    Built without validation (`model_construct`): every value comes from an answer this
    module built, and validating it cost more than the rest of a batch row's scoring
    (issue 8 profile). tests/unit/serve checks it equals the validated record.
    """
    return PredictionMade.model_construct(
        message_version=PredictionMade.MESSAGE_VERSION,
        produced_at=at,
        event_id=answer.prediction_id,
        event_time=at,
        entity_id=answer.entity_id,
        model=answer.model,
        score=answer.score,
        features=dict(features),
        degraded=answer.degraded,
        reasons=list(answer.reasons),
    )

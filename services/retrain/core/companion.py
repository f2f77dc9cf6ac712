"""The companion model trained with every version: serve's simpler fallback.

Pure: the training frame and the main model's gain importance in, a few-tree
LightGBM booster over the most robust few inputs out. Robust means present: an
input missing in many training rows is likely missing when the main model cannot
answer either, so `auto` takes the main model's strongest inputs among those
missing in at most `max_missing` of the rows. The companion is trained and measured
on the main model's own time split (same frame, same holdout), so its holdout
metrics compare with the main model's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from libs.common.definitions import Companion, ModelDefinition, feature_key
from services.retrain.core.training import DEFAULT_HOLDOUT_FRACTION, TrainingMetrics, train_booster

COMPANION_SCHEMA_VERSION = 1

# Main-model parameters that change what a score means (the objective, class
# weighting) or how small a leaf may be; the companion keeps them and sets its own size.
_CARRIED_PARAMS = ("objective", "is_unbalance", "scale_pos_weight", "min_data_in_leaf", "seed")


def missing_shares(frame: pd.DataFrame, features: Sequence[str]) -> dict[str, float]:
    """Share of rows in which each 'view.feature' input is missing (None or NaN).

    Args:
        frame: a training frame (columns named by `feature_key`).
        features: the model's 'view.feature' references.

    Returns:
        Reference -> missing share in [0, 1] (1 for an empty frame).
    """
    if frame.empty:
        return dict.fromkeys(features, 1.0)
    return {ref: float(frame[feature_key(ref)].isna().mean()) for ref in features}


def select_companion_features(
    importance: Mapping[str, float],
    missing: Mapping[str, float],
    *,
    max_features: int,
    max_missing: float,
) -> list[str]:
    """The companion's inputs: the strongest of the main model's robust inputs.

    Args:
        importance: 'view.feature' -> the main model's share of split gain.
        missing: 'view.feature' -> its missing share in the training rows.
        max_features: how many inputs at most.
        max_missing: inputs missing more often than this are not taken.

    Returns:
        Up to `max_features` references, strongest first (ties by name); empty when
        no input the main model split on is present often enough.
    """
    eligible = [
        ref
        for ref, gain in importance.items()
        if gain > 0.0 and missing.get(ref, 1.0) <= max_missing
    ]
    eligible.sort(key=lambda ref: (-importance[ref], ref))
    return eligible[:max_features]


def companion_definition(model: ModelDefinition, features: Sequence[str]) -> ModelDefinition:
    """`model` reduced to the companion: its `features`, few small trees."""
    spec = model.fallback.companion
    params: dict[str, Any] = {k: model.lightgbm[k] for k in _CARRIED_PARAMS if k in model.lightgbm}
    params.setdefault("objective", "binary")
    params.update(num_leaves=spec.leaves, learning_rate=spec.learning_rate)
    ordered = [ref for ref in model.features if ref in set(features)]  # model input order
    return model.model_copy(
        update={"features": ordered, "lightgbm": params, "num_boost_round": spec.trees}
    )


def _number(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


@dataclass(frozen=True)
class TrainedCompanion:
    """A trained companion, what it reads and how it scored on the main model's holdout."""

    booster: lgb.Booster
    features: list[str]
    metrics: TrainingMetrics
    selection: str
    missing: dict[str, float]
    importance: dict[str, float]

    @property
    def columns(self) -> list[str]:
        return [feature_key(ref) for ref in self.features]

    def model_text(self) -> str:
        """The booster in LightGBM's text format: what the registry stores and checks."""
        return str(self.booster.model_to_string())

    def to_json(self) -> str:
        """`companion.json`: its inputs, size, how they were chosen and its holdout metrics."""
        return json.dumps(
            {
                "schema_version": COMPANION_SCHEMA_VERSION,
                "features": self.features,
                "columns": self.columns,
                "trees": int(self.booster.num_trees()),
                "selection": self.selection,
                "missing": {ref: round(self.missing[ref], 6) for ref in self.features},
                "main_gain": {
                    ref: round(self.importance.get(ref, 0.0), 6) for ref in self.features
                },
                "metrics": {
                    "auc": _number(self.metrics.auc),
                    "log_loss": _number(self.metrics.log_loss),
                    "prior_log_loss": _number(self.metrics.prior_log_loss),
                    "holdout_rows": self.metrics.holdout_rows,
                    "train_rows": self.metrics.train_rows,
                },
            },
            indent=2,
        )


def train_companion(
    frame: pd.DataFrame,
    model: ModelDefinition,
    importance: Mapping[str, float],
    *,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    weights: np.ndarray | None = None,
    categories: Mapping[str, Sequence[str] | None] | None = None,
) -> TrainedCompanion | None:
    """Train the companion of `model` on the frame its main model was trained on.

    Args:
        frame: the training frame the main model saw (same rows, same order).
        model: the model definition; `fallback.companion` says how.
        importance: 'view.feature' -> the main model's gain share (`gain_importance`).
        holdout_fraction: the main model's, so both share one time split.
        weights: the main model's sample weights, if any.
        categories: the main model's categorical columns (`JoinSpec.categories`); the
            companion's are a subset, encoded alike (same rows, same codes).

    Returns:
        The companion, or None when it is disabled or no input qualifies.

    Raises:
        ValueError: listed companion features that are not the model's.
    """
    spec: Companion = model.fallback.companion
    if not spec.enabled:
        return None
    spec.check_features(model.name, model.features)
    missing = missing_shares(frame, model.features)
    if spec.features == "auto":
        chosen = select_companion_features(
            importance, missing, max_features=spec.max_features, max_missing=spec.max_missing
        )
        selection = f"auto: top {spec.max_features} by gain, missing <= {spec.max_missing:g}"
    else:
        chosen, selection = list(spec.features), "listed"
    if not chosen:
        return None
    definition = companion_definition(model, chosen)
    columns = {feature_key(ref) for ref in definition.features}
    trained = train_booster(
        frame,
        definition,
        holdout_fraction=holdout_fraction,
        weights=weights,
        categories=None
        if categories is None
        else {c: v for c, v in categories.items() if c in columns},
    )
    return TrainedCompanion(
        booster=trained.booster,
        features=list(definition.features),
        metrics=trained.metrics,
        selection=selection,
        missing=missing,
        importance=dict(importance),
    )

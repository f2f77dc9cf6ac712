"""Training a LightGBM booster on a training frame, with an honest time-ordered holdout.

Pure: a frame in, a booster and its metrics out. The newest rows (by as-of time)
are the holdout, so the metrics say how the model does on data after what it saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from libs.common.definitions import ModelDefinition
from libs.common.features import model_columns
from services.retrain.core.dataset import LABEL, TS
from services.retrain.errors import NoTrainingData

DEFAULT_HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class TrainingMetrics:
    """How a booster did on its holdout. `auc` is NaN when the holdout has one class."""

    auc: float
    log_loss: float
    rows: int
    train_rows: int
    holdout_rows: int
    positive_rate: float
    # Log loss on the holdout of the constant predictor at the training base rate: what
    # the fallback's prior would score. A model that cannot beat it is no model.
    prior_log_loss: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "auc": self.auc,
            "log_loss": self.log_loss,
            "rows": float(self.rows),
            "train_rows": float(self.train_rows),
            "holdout_rows": float(self.holdout_rows),
            "positive_rate": self.positive_rate,
            "prior_log_loss": self.prior_log_loss,
        }


@dataclass(frozen=True)
class TrainedModel:
    booster: lgb.Booster
    metrics: TrainingMetrics
    params: dict[str, Any]
    columns: list[str]
    holdout: pd.DataFrame


def time_split(frame: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by as-of time: the latest `holdout_fraction` of rows is the holdout.

    Ties in time are broken by the frame's order (stable sort), so the split is
    deterministic for a given frame.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    ordered = frame.sort_values(TS, kind="stable").reset_index(drop=True)
    n_holdout = max(1, math.ceil(len(ordered) * holdout_fraction))
    cut = len(ordered) - n_holdout
    return ordered.iloc[:cut], ordered.iloc[cut:]


def score(booster: lgb.Booster, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Scores of `frame`'s rows, features taken in `columns` order."""
    return np.asarray(booster.predict(frame[columns].to_numpy(dtype="float64")), dtype="float64")


def holdout_auc(booster: lgb.Booster, holdout: pd.DataFrame, columns: list[str]) -> float:
    """AUC of any booster on a holdout (NaN when the holdout has one class)."""
    y = holdout[LABEL].to_numpy()
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, score(booster, holdout, columns)))


def lightgbm_params(model: ModelDefinition) -> dict[str, Any]:
    """The model's LightGBM parameters, quiet unless the definitions ask otherwise."""
    params = dict(model.lightgbm)
    params.setdefault("verbosity", -1)
    params.setdefault("seed", 0)
    return params


def train_booster(
    frame: pd.DataFrame,
    model: ModelDefinition,
    *,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
) -> TrainedModel:
    """Train on the older rows of `frame` and measure on the newest ones.

    Args:
        frame: a training frame (`model_columns(model)`, `label`, `ts`).
        model: the model definition (LightGBM parameters, boosting rounds).
        holdout_fraction: share of the newest rows held out for the metrics.

    Returns:
        The booster (trained on the older rows only, so the metrics describe it),
        its holdout metrics and the holdout itself.

    Raises:
        NoTrainingData: fewer than two rows, or the training rows hold one class.
    """
    columns = model_columns(model)
    if len(frame) < 2:
        raise NoTrainingData(f"model {model.name!r}: {len(frame)} labelled rows, need at least 2")
    train, holdout = time_split(frame, holdout_fraction)
    y_train = train[LABEL].to_numpy(dtype="float64")
    if len(np.unique(y_train)) < 2:
        raise NoTrainingData(
            f"model {model.name!r}: all {len(train)} training labels are {y_train[0]:g}; "
            "a classifier needs both classes"
        )
    params = lightgbm_params(model)
    dataset = lgb.Dataset(
        train[columns].to_numpy(dtype="float64"),
        label=y_train,
        feature_name=columns,
        free_raw_data=True,
    )
    booster = lgb.train(params, dataset, num_boost_round=model.num_boost_round)

    y_hold = holdout[LABEL].to_numpy(dtype="float64")
    p_hold = score(booster, holdout, columns)
    auc = float(roc_auc_score(y_hold, p_hold)) if len(np.unique(y_hold)) == 2 else math.nan
    metrics = TrainingMetrics(
        auc=auc,
        log_loss=float(log_loss(y_hold, np.clip(p_hold, 1e-7, 1 - 1e-7), labels=[0.0, 1.0])),
        rows=len(frame),
        train_rows=len(train),
        holdout_rows=len(holdout),
        positive_rate=float(frame[LABEL].mean()),
        prior_log_loss=float(
            log_loss(
                y_hold,
                np.full(len(y_hold), np.clip(y_train.mean(), 1e-7, 1 - 1e-7)),
                labels=[0.0, 1.0],
            )
        ),
    )
    return TrainedModel(
        booster=booster, metrics=metrics, params=params, columns=columns, holdout=holdout
    )

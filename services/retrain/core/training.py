"""Training a LightGBM booster on a training frame, with an honest time-ordered holdout.

Pure: a frame in, a booster and its metrics out. The newest rows (by as-of time)
are the holdout, so the metrics say how the model does on data after what it saw.
How the booster is fitted is injected (`Fit`): in process here (`local_fit`), or on
the Ray cluster (`services/retrain/adapters/ray_train.py`) for training sets larger
than one worker; both share the split and the holdout metrics.

Categorical inputs (`last` of a str field) arrive as str; the `CategoryEncoding` built
from the training rows (libs/common/features/categories.py) turns them into LightGBM
category codes for the fit and for every score of the booster, and is stored with the
version so serve encodes alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from libs.common.definitions import ModelDefinition
from libs.common.features import CategoryEncoding, model_columns
from services.retrain.core.dataset import LABEL, TS
from services.retrain.errors import NoTrainingData

DEFAULT_HOLDOUT_FRACTION = 0.2

Fit = Callable[[pd.DataFrame, list[str], np.ndarray | None, dict[str, Any], int], lgb.Booster]
"""(training rows, feature columns, sample weights or None, LightGBM params, rounds) -> booster.

The rows hold `columns` (float64; categories already encoded as codes) and `label`;
weights, when given, align with the rows. `params[CATEGORICAL]`, when present, names
the categorical columns: a fit passes them to `lgb.Dataset(categorical_feature=...)`
(`categorical_split`). A fit returns a booster whose feature names are `columns`, in
that order.
"""

CATEGORICAL = "categorical_feature"


def categorical_split(
    params: Mapping[str, Any],
) -> tuple[dict[str, Any], list[str] | Literal["auto"]]:
    """LightGBM params without the categorical column names, and those names for
    `lgb.Dataset(categorical_feature=...)` ("auto" when there are none).

    LightGBM ignores (with a warning) a `categorical_feature` given in params: the
    Dataset must be told.
    """
    rest = dict(params)
    names = rest.pop(CATEGORICAL, None)
    return rest, list(names) if names else "auto"


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
    # The version's category codes; the holdout keeps categories as str.
    encoding: CategoryEncoding = field(default_factory=CategoryEncoding)


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


def score(
    booster: lgb.Booster,
    frame: pd.DataFrame,
    columns: list[str],
    encoding: CategoryEncoding | None = None,
) -> np.ndarray:
    """Scores of `frame`'s rows, features taken in `columns` order.

    `encoding` is the booster's own (its version's): categorical columns of `frame`
    hold str and are encoded through it; None for a booster without categorical inputs.
    """
    x = (encoding or CategoryEncoding()).matrix(frame, columns)
    return np.asarray(booster.predict(x), dtype="float64")


def holdout_auc(
    booster: lgb.Booster,
    holdout: pd.DataFrame,
    columns: list[str],
    encoding: CategoryEncoding | None = None,
) -> float:
    """AUC of any booster on a holdout (NaN when the holdout has one class)."""
    y = holdout[LABEL].to_numpy()
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, score(booster, holdout, columns, encoding)))


def lightgbm_params(model: ModelDefinition) -> dict[str, Any]:
    """The model's LightGBM parameters, quiet unless the definitions ask otherwise."""
    params = dict(model.lightgbm)
    params.setdefault("verbosity", -1)
    params.setdefault("seed", 0)
    return params


def local_fit(
    train: pd.DataFrame,
    columns: list[str],
    weights: np.ndarray | None,
    params: dict[str, Any],
    rounds: int,
) -> lgb.Booster:
    """Fit in this process with plain LightGBM: the path for sets that fit one worker."""
    params, categorical = categorical_split(params)
    dataset = lgb.Dataset(
        train[columns].to_numpy(dtype="float64"),
        label=train[LABEL].to_numpy(dtype="float64"),
        weight=weights,
        feature_name=columns,
        categorical_feature=categorical,
        free_raw_data=True,
    )
    return lgb.train(params, dataset, num_boost_round=rounds)


def fit_by_size(max_local_rows: int, large: Fit, small: Fit = local_fit) -> Fit:
    """A fit that trains sets of more than `max_local_rows` rows with `large`, others with `small`.

    `max_local_rows=0` sends every set to `large` (how the tests force the distributed path).
    """

    def fit(
        train: pd.DataFrame,
        columns: list[str],
        weights: np.ndarray | None,
        params: dict[str, Any],
        rounds: int,
    ) -> lgb.Booster:
        chosen = large if len(train) > max_local_rows else small
        return chosen(train, columns, weights, params, rounds)

    return fit


_WEIGHT = "__weight__"  # carries sample weights through the time split


def train_booster(
    frame: pd.DataFrame,
    model: ModelDefinition,
    *,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    weights: np.ndarray | None = None,
    fit: Fit = local_fit,
    categories: Mapping[str, Sequence[str] | None] | None = None,
) -> TrainedModel:
    """Train on the older rows of `frame` and measure on the newest ones.

    Args:
        frame: a training frame (`model_columns(model)`, `label`, `ts`); categorical
            columns hold str (None when missing).
        model: the model definition (LightGBM parameters, boosting rounds).
        holdout_fraction: share of the newest rows held out for the metrics.
        weights: LightGBM sample weights, one per row of `frame` (the data window's
            time decay); None weighs rows equally. The holdout metrics are unweighted.
        fit: how the booster is fitted on the training rows (`local_fit`, or the
            distributed fit of `adapters/ray_train.py` through `fit_by_size`).
        categories: categorical column -> its declared allowed values or None
            (`JoinSpec.categories`); None: the frame's non-numeric feature columns,
            with no declared values.

    Returns:
        The booster (trained on the older rows only, so the metrics describe it),
        its holdout metrics, the holdout itself (categories as str) and the category
        encoding built from the training rows (`CategoryEncoding.fit`).

    Raises:
        NoTrainingData: fewer than two rows, or the training rows hold one class.
    """
    columns = model_columns(model)
    if len(frame) < 2:
        raise NoTrainingData(f"model {model.name!r}: {len(frame)} labelled rows, need at least 2")
    if weights is not None:
        if len(weights) != len(frame):
            raise ValueError(f"{len(weights)} weights for {len(frame)} rows")
        frame = frame.assign(**{_WEIGHT: np.asarray(weights, dtype="float64")})
    train, holdout = time_split(frame, holdout_fraction)
    holdout = holdout.drop(columns=[_WEIGHT], errors="ignore")
    y_train = train[LABEL].to_numpy(dtype="float64")
    if len(np.unique(y_train)) < 2:
        raise NoTrainingData(
            f"model {model.name!r}: all {len(train)} training labels are {y_train[0]:g}; "
            "a classifier needs both classes"
        )
    if categories is None:
        categories = dict.fromkeys(
            c for c in columns if not pd.api.types.is_numeric_dtype(frame[c].dtype)
        )
    encoding = CategoryEncoding.fit(train, categories)
    params = lightgbm_params(model)
    params.pop(CATEGORICAL, None)
    if encoding.columns:
        params[CATEGORICAL] = encoding.columns
    w_train = train[_WEIGHT].to_numpy() if weights is not None else None
    booster = fit(encoding.encode_frame(train), columns, w_train, params, model.num_boost_round)

    y_hold = holdout[LABEL].to_numpy(dtype="float64")
    p_hold = score(booster, holdout, columns, encoding)
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
        booster=booster,
        metrics=metrics,
        params=params,
        columns=columns,
        holdout=holdout,
        encoding=encoding,
    )

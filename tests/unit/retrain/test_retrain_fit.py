"""The injected fit: the local path, the switch by size, and weights through the split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from libs.common.definitions import ModelDefinition, load_definitions
from libs.common.features import model_columns
from services.retrain.core.dataset import LABEL, TS
from services.retrain.core.training import fit_by_size, local_fit, train_booster

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(name="model")
def _model() -> ModelDefinition:
    return load_definitions(REPO / "signalops.yaml").model("default")


def _frame(
    model: ModelDefinition, rows: int, *, seed: int = 0, flip_after: int | None = None
) -> pd.DataFrame:
    """A learnable frame: the label follows the first feature (its sign flips after
    row `flip_after`, a concept drift), rows one second apart and shuffled."""
    rng = np.random.default_rng(seed)
    columns = model_columns(model)
    x = rng.normal(size=(rows, len(columns)))
    truth = x[:, 0] + 0.3 * rng.normal(size=rows) > 0
    if flip_after is not None:
        truth[flip_after:] = ~truth[flip_after:]
    frame = pd.DataFrame(x, columns=columns).assign(
        **{LABEL: truth.astype("float64"), TS: np.arange(rows, dtype="float64")}
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


PARAMS = {"objective": "binary", "verbosity": -1, "seed": 0, "num_threads": 1}


def test_local_fit_learns_with_the_model_columns(model: ModelDefinition) -> None:
    """The in-process fit returns a booster over the model's columns that learned the truth."""
    frame = _frame(model, 2000)
    columns = model_columns(model)
    booster = local_fit(frame, columns, None, PARAMS, 30)
    assert isinstance(booster, lgb.Booster)
    assert booster.feature_name() == columns
    assert booster.current_iteration() == 30
    test = _frame(model, 1000, seed=1)
    assert roc_auc_score(test[LABEL], booster.predict(test[columns].to_numpy())) > 0.9


def test_local_fit_follows_the_weights(model: ModelDefinition) -> None:
    """Weighting the rows after a concept drift makes the booster learn the new truth."""
    frame = _frame(model, 4000, flip_after=2000)
    columns = model_columns(model)
    newer = (frame[TS] >= 2000).to_numpy()
    weights = np.where(newer, 1.0, 1e-3)
    x0 = np.zeros((2, len(columns)))
    x0[:, 0] = [-2.0, 2.0]
    unweighted = local_fit(frame, columns, None, PARAMS, 30).predict(x0)
    weighted = local_fit(frame, columns, weights, PARAMS, 30).predict(x0)
    # The new truth: positive for a low first feature.
    assert weighted[0] > 0.8 > 0.2 > weighted[1]
    assert abs(unweighted[0] - unweighted[1]) < abs(weighted[0] - weighted[1])


class _Recorder:
    """A fit that records what it was given and fits locally."""

    def __init__(self) -> None:
        self.calls: list[tuple[pd.DataFrame, np.ndarray | None]] = []

    def __call__(
        self,
        train: pd.DataFrame,
        columns: list[str],
        weights: np.ndarray | None,
        params: dict[str, Any],
        rounds: int,
    ) -> lgb.Booster:
        self.calls.append((train, weights))
        return local_fit(train, columns, weights, params, rounds)


@pytest.mark.parametrize(
    ("max_local_rows", "path"),
    [(0, "large"), (79, "large"), (80, "small"), (2_000_000, "small")],
)
def test_fit_by_size_sends_large_sets_to_the_large_fit(
    model: ModelDefinition, max_local_rows: int, path: str
) -> None:
    """Training sets of more than `max_local_rows` rows take the large path; 0 forces it."""
    small, large = _Recorder(), _Recorder()
    train_booster(
        _frame(model, 100),
        model,
        holdout_fraction=0.2,
        fit=fit_by_size(max_local_rows, large, small),
    )
    assert (len(small.calls), len(large.calls)) == ((1, 0) if path == "small" else (0, 1))
    [(train, _)] = (small if path == "small" else large).calls
    assert len(train) == 80


def test_weights_follow_their_rows_through_the_time_split(model: ModelDefinition) -> None:
    """Weights given in the frame's order reach the fit aligned with the (time-sorted) rows,
    and the holdout carries no weight column."""
    frame = _frame(model, 100)
    fit = _Recorder()
    trained = train_booster(
        frame, model, holdout_fraction=0.2, weights=frame[TS].to_numpy() + 1.0, fit=fit
    )
    [(train, weights)] = fit.calls
    assert weights is not None
    np.testing.assert_array_equal(weights, train[TS].to_numpy() + 1.0)
    assert list(trained.holdout.columns) == list(frame.columns)
    with pytest.raises(ValueError, match="3 weights for 100 rows"):
        train_booster(frame, model, weights=np.ones(3))

"""The Predictor around a LightGBM booster: scores, contributions, missing values."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightgbm as lgb
import numpy as np
import pytest

from libs.common.definitions import Definitions
from libs.common.features import model_columns
from services.serve.core.predict import BIAS, Predictor
from services.serve.errors import ModelMismatch


@pytest.fixture(name="booster")
def _booster(definitions: Definitions, train: Callable[..., lgb.Booster]) -> lgb.Booster:
    return train(definitions.model("default"))


@pytest.fixture(name="rows")
def _rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(50, 3))


def test_scores_are_probabilities(booster: lgb.Booster, rows: np.ndarray) -> None:
    """A binary model's scores lie in [0, 1], one per row."""
    scores = Predictor.from_booster(booster).predict(rows)
    assert scores.shape == (50,)
    assert np.all((scores >= 0) & (scores <= 1))


def test_contributions_sum_to_the_raw_score(
    booster: lgb.Booster, rows: np.ndarray, definitions: Definitions
) -> None:
    """Per-feature contributions plus bias add up to the raw (log-odds) score."""
    model = definitions.model("default")
    predictor = Predictor.from_booster(booster, model_columns(model))
    contribs = predictor.contributions(rows, model.features)
    raw = predictor.raw_scores(rows)
    assert set(contribs[0]) == {*model.features, BIAS}
    for c, r in zip(contribs, raw, strict=True):
        assert math.isclose(sum(c.values()), r, rel_tol=1e-9, abs_tol=1e-9)
    # and the raw score is the logit of the probability
    probs = predictor.predict(rows)
    assert np.allclose(1 / (1 + np.exp(-raw)), probs)


def test_missing_values_still_score(booster: lgb.Booster) -> None:
    """NaN inputs are missing values to LightGBM: finite scores, not errors."""
    predictor = Predictor.from_booster(booster)
    scores = predictor.predict([[math.nan, math.nan, math.nan], [0.5, math.nan, 1.0]])
    assert np.all(np.isfinite(scores))
    assert all(math.isfinite(v) for v in predictor.contributions([[math.nan] * 3])[0].values())


def test_columns_must_match_the_definitions(booster: lgb.Booster) -> None:
    """A booster trained on other columns is refused, naming both lists."""
    with pytest.raises(ModelMismatch, match=r"differ from the definitions' \['stats__temp_last'\]"):
        Predictor.from_booster(booster, ["stats__temp_last"])


def test_rows_of_the_wrong_width_are_rejected(booster: lgb.Booster) -> None:
    """Rows must have one value per model column."""
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        Predictor.from_booster(booster).predict([[1.0, 2.0]])

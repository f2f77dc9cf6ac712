"""The model card: built from plain values, every field present, round-trips through JSON."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import pytest

from libs.common.definitions import PromotionGates
from services.retrain.core.drift.reference import PREDICTION, DriftReference
from services.retrain.core.evaluation import evaluate
from services.retrain.core.model_card import (
    ModelCard,
    build_model_card,
    data_window,
    gain_importance,
)
from services.retrain.core.promotion import NO_CHAMPION, ChampionScore, decide
from services.retrain.core.slices import cut_slices

T0 = 1_790_000_000.0  # an epoch second in 2026


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature 0 carries the signal, feature 1 is noise; a few values of 0 are missing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * x[:, 0]))).astype(float)
    x[:20, 0] = np.nan
    return x, y


def _card(champion_seed: int | None = 1) -> ModelCard:
    """A card for a booster trained on 800 rows and judged on 400 newer ones."""
    x, y = _data(800, 0)
    names = ["v__signal", "v__noise"]
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "seed": 0},
        lgb.Dataset(x, label=y, feature_name=names),
        num_boost_round=20,
    )
    hx, hy = _data(400, 2)
    slices = cut_slices({"v.signal": hx[:, 0]}, bins=4)
    candidate = evaluate(hy, booster.predict(hx), slices)
    champion = NO_CHAMPION
    if champion_seed is not None:
        cx, cy = _data(800, champion_seed)
        old = lgb.train(
            {"objective": "binary", "verbosity": -1},
            lgb.Dataset(cx, label=cy, feature_name=names),
            num_boost_round=5,
        )
        champion = ChampionScore("3", evaluate(hy, old.predict(hx), slices))
    gates = PromotionGates(min_rows=200, slices=["v.signal"])
    decision = decide(candidate, gates, rows=1200, prior_log_loss=0.69, champion=champion)
    times = T0 + np.arange(1200, dtype=float)
    return build_model_card(
        model="default",
        reason="drift: performance",
        window=data_window(
            times, train_rows=800, since=T0, bootstrap_history=False, policy="since_change"
        ),
        candidate=candidate,
        champion=champion,
        decision=decision,
        reference=DriftReference.of({"v.signal": x[:, 0], "v.noise": x[:, 1], PREDICTION: hy}),
        importance=gain_importance(booster, {"v__signal": "v.signal", "v__noise": "v.noise"}),
        timings={"join_s": 1.23456, "train_s": 0.5},
        created=datetime(2026, 9, 21, 12, 0, tzinfo=UTC),
    )


def test_the_card_holds_every_section() -> None:
    """Window, metrics of both models, slices, reference, importance, gates and timings."""
    card = _card()

    assert (card.model, card.version, card.reason) == ("default", None, "drift: performance")
    d = card.data
    assert (d.rows, d.train_rows, d.holdout_rows, d.bootstrap_history) == (1200, 800, 400, False)
    assert d.since == d.first_row == datetime.fromtimestamp(T0, UTC)
    assert d.policy == "since_change"
    assert d.holdout_from == datetime.fromtimestamp(T0 + 800, UTC)
    assert d.last_row == datetime.fromtimestamp(T0 + 1199, UTC)
    assert card.candidate.rows == 400 and card.candidate.auc is not None
    assert card.candidate.auc > 0.75
    assert card.champion_version == "3" and card.champion is not None
    assert card.champion_note is None
    # Four quartiles of the signal plus its missing values, each with both AUCs.
    assert [s.slice for s in card.slices][-1] == "missing"
    assert len(card.slices) == 5 and sum(s.rows for s in card.slices) == 400
    assert all(s.champion_auc is not None for s in card.slices if s.slice != "missing")
    assert {r.column for r in card.drift_reference} == {"v.signal", "v.noise", PREDICTION}
    reference = {r.column: r for r in card.drift_reference}
    assert (reference["v.signal"].sample_size, reference["v.noise"].sample_size) == (780, 800)
    assert reference["v.signal"].missing_share == pytest.approx(20 / 800)
    assert [f.feature for f in card.feature_importance] == ["v.signal", "v.noise"]
    assert sum(f.gain for f in card.feature_importance) == pytest.approx(1.0)
    names = [g.name for g in card.gates]
    assert names[:2] == ["min_rows", "fallback_auc"]
    assert {"calibration", "champion_auc", "champion_log_loss"} <= set(names)
    assert any(n.startswith("slice v.signal") for n in names)
    assert card.promoted == all(g.status != "fail" for g in card.gates)
    assert card.timings == {"join_s": 1.2346, "train_s": 0.5}


def test_the_card_round_trips_through_json() -> None:
    """Stored as JSON (no NaN tokens), read back equal; the reader fills in the version."""
    card = _card()
    text = card.model_dump_json(indent=2)

    data = json.loads(text)  # plain JSON any tool can read
    assert data["model"] == "default" and data["version"] is None
    assert {"data", "candidate", "champion", "slices", "gates", "feature_importance"} <= set(data)
    again = ModelCard.model_validate_json(text)
    assert again == card
    assert again.for_version("4").version == "4"
    assert ModelCard.model_validate(card.model_dump(mode="json")) == card


def test_an_undefined_auc_and_no_champion_are_stored_as_null() -> None:
    """Without a champion the comparison is empty and says why; a one-class slice's AUC
    (NaN) is stored as null, since JSON has no NaN."""
    card = _card(champion_seed=None)

    assert card.champion is None and card.champion_version is None
    assert card.champion_note == "no champion"
    assert all(s.champion_auc is None for s in card.slices)
    skipped = {g.name for g in card.gates if g.status == "skipped"}
    assert {"champion_auc", "champion_log_loss", "slices"} <= skipped
    text = card.model_dump_json()
    assert "NaN" not in text
    one_class = evaluate(np.ones(10), np.linspace(0, 1, 10))
    assert math.isnan(one_class.auc)
    assert (
        card.candidate.model_validate({**card.candidate.model_dump(), "auc": one_class.auc}).auc
        is None
    )


def test_gain_importance_is_normalised_and_sorted() -> None:
    """Shares of total gain, largest first; a booster that never split has all zeros."""
    x, y = _data(500, 4)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1},
        lgb.Dataset(np.column_stack([x[:, 1], x[:, 0]]), label=y, feature_name=["b", "a"]),
        num_boost_round=10,
    )
    shares = gain_importance(booster, {"a": "v.a"})
    assert list(shares) == ["v.a", "b"]  # unmapped columns keep their own name
    assert sum(shares.values()) == pytest.approx(1.0)
    flat = lgb.train(
        {"objective": "binary", "verbosity": -1},
        lgb.Dataset(np.zeros((50, 1)), label=np.r_[np.zeros(25), np.ones(25)]),
        num_boost_round=2,
    )
    assert set(gain_importance(flat, {}).values()) == {0.0}


def test_data_window_of_an_unwindowed_run() -> None:
    """All history (since None), bootstrap flagged, no holdout start when nothing is held out."""
    window = data_window(np.array([T0 + 5, T0]), train_rows=2, since=None, bootstrap_history=True)
    assert window.since is None and window.bootstrap_history
    assert window.first_row == datetime.fromtimestamp(T0, UTC)
    assert window.holdout_rows == 0 and window.holdout_from is None

"""The promotion rule: fallback floor, champion on the same holdout, calibration, slices."""

from __future__ import annotations

import math
from typing import Any, cast

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from libs.common.definitions import PromotionGates, parse_definitions
from libs.common.errors import DefinitionsError
from libs.common.registry import Registry
from services.retrain.core.dataset import LABEL
from services.retrain.core.evaluation import (
    HoldoutEvaluation,
    calibration_noise,
    evaluate,
    expected_calibration_error,
)
from services.retrain.core.promotion import NO_CHAMPION, ChampionScore, decide
from services.retrain.core.slices import MISSING, cut_slices
from services.retrain.core.training import TrainedModel, TrainingMetrics
from services.retrain.train import _champion_score

GATES = PromotionGates(min_auc=0.6, min_rows=200)
RELATIVE = PromotionGates(min_rows=200)  # the default: no absolute floor


def _ev(auc: float, log_loss: float = 0.5, calibration: float = 0.02) -> HoldoutEvaluation:
    return HoldoutEvaluation(auc=auc, log_loss=log_loss, calibration_error=calibration, rows=500)


def _champion(auc: float, log_loss: float = 0.5, calibration: float = 0.02) -> ChampionScore:
    return ChampionScore("1", _ev(auc, log_loss, calibration))


@pytest.mark.parametrize(
    ("rows", "auc", "champion", "promote", "reason"),
    [
        (1000, 0.80, NO_CHAMPION, True, "skipped champion_auc: no champion"),
        (199, 0.80, NO_CHAMPION, False, "rows 199 < min_rows 200"),
        (200, 0.60, NO_CHAMPION, True, "auc 0.6000 >= min_auc 0.6"),
        (1000, 0.59, NO_CHAMPION, False, "auc 0.5900 < min_auc 0.6"),
        (1000, math.nan, NO_CHAMPION, False, "auc undefined"),
        (1000, 0.80, _champion(0.805), True, "auc 0.8000 >= champion v1"),  # within tolerance
        (1000, 0.80, _champion(0.85), False, "auc 0.8000 < champion v1"),
        (1000, 0.90, _champion(0.85), True, "auc 0.9000 >= champion v1"),
        (1000, 0.80, ChampionScore("3", None, "reads other features"), True, "other features"),
        (100, 0.50, _champion(0.90), False, "rows 100 < min_rows 200"),
    ],
)
def test_promotion_rule(
    rows: int, auc: float, champion: ChampionScore, promote: bool, reason: str
) -> None:
    """A candidate is promoted only when no gate fails; the reasons say which did not."""
    decision = decide(_ev(auc), GATES, rows=rows, champion=champion, tolerance=0.01)
    assert decision.promote is promote
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_every_check_is_reported_failed_or_not() -> None:
    """Several failing gates are all listed, not only the first, and passed ones too."""
    decision = decide(
        _ev(0.4, log_loss=0.9), GATES, rows=10, prior_log_loss=0.69, champion=_champion(0.9)
    )
    assert not decision.promote
    failed = {c.name for c in decision.checks if c.status == "fail"}
    assert failed == {
        "min_rows",
        "fallback_auc",
        "min_auc",
        "prior_log_loss",
        "champion_auc",
        "champion_log_loss",
    }
    assert [c.name for c in decision.checks if c.status == "pass"] == ["calibration"]
    assert decision.reasons == tuple(c.reason for c in decision.checks)
    assert decision.summary.startswith("not promoted: ")


def test_no_champion_skips_the_comparison_gates() -> None:
    """Without a champion (or one that cannot score the holdout) the comparisons are
    reported as skipped, and skipped checks do not block."""
    gates = PromotionGates(min_rows=200, slices=["v.x"])
    for champion, note in [
        (NO_CHAMPION, "no champion"),
        (ChampionScore("4", None, "champion v4 reads other features"), "other features"),
    ]:
        decision = decide(_ev(0.8), gates, rows=1000, prior_log_loss=0.69, champion=champion)
        assert decision.promote, decision.reasons
        skipped = {c.name: c.detail for c in decision.checks if c.status == "skipped"}
        assert set(skipped) == {"champion_auc", "champion_log_loss", "slices"}
        assert all(note in d for d in skipped.values())


def test_min_gain_over_champion_and_the_tolerance_add_up() -> None:
    """The candidate must reach champion + min_gain_over_champion - tolerance."""
    gates = PromotionGates(min_rows=200, min_gain_over_champion=0.02)
    assert (
        decide(_ev(0.815), gates, rows=1000, champion=_champion(0.80), tolerance=0.0).promote
        is False
    )
    assert decide(_ev(0.820), gates, rows=1000, champion=_champion(0.80), tolerance=0.0).promote
    assert decide(_ev(0.815), gates, rows=1000, champion=_champion(0.80), tolerance=0.01).promote


def test_log_loss_may_not_grow_beyond_the_allowance() -> None:
    """Same AUC, but 0.05 nats worse log loss than the champion: refused (allowance 0.02)."""
    decision = decide(_ev(0.8, log_loss=0.55), RELATIVE, rows=1000, champion=_champion(0.8, 0.50))
    assert not decision.promote
    assert any(
        "log_loss 0.5500 > champion v1 log_loss 0.5000 + 0.02" in r for r in decision.reasons
    )


@pytest.mark.parametrize(
    ("candidate", "champion", "promote"),
    [
        (0.35, 0.02, False),  # much worse calibrated than the limit and the champion
        (0.35, None, False),  # no champion: the limit alone
        (0.05, 0.02, True),  # within the limit
        (0.35, 0.40, True),  # over the limit but better than a decayed champion
    ],
)
def test_calibration_gate(candidate: float, champion: float | None, promote: bool) -> None:
    """ECE above max_calibration_error (0.1) is refused unless the champion is worse."""
    champ = NO_CHAMPION if champion is None else _champion(0.8, calibration=champion)
    decision = decide(_ev(0.8, calibration=candidate), RELATIVE, rows=1000, champion=champ)
    [check] = [c for c in decision.checks if c.name == "calibration"]
    assert (check.status == "pass") is promote, check
    assert decision.promote is promote


# --- measured on real scores ---------------------------------------------------------


def _world(n: int, seed: int, weights: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Two normal features and labels drawn from a logistic truth with `weights`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    p = 1 / (1 + np.exp(-(weights[0] * x[:, 0] + weights[1] * x[:, 1])))
    return x, (rng.random(n) < p).astype(float)


def _booster(x: np.ndarray, y: np.ndarray) -> lgb.Booster:
    params = {"objective": "binary", "verbosity": -1, "seed": 0, "num_leaves": 7}
    return lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=40)


OLD, NEW = (2.0, -1.0), (-2.0, 1.0)  # a concept drift: the truth flips


def test_a_decayed_champion_is_replaced_by_a_better_candidate() -> None:
    """After a drift the champion, scored on the new holdout, ranks backwards; a candidate
    trained on the new world beats it there and is promoted (an absolute floor or the
    champion's recorded AUC kept the worse model before)."""
    champion = _booster(*_world(2000, 1, OLD))
    candidate = _booster(*_world(2000, 2, NEW))
    x, y = _world(1000, 3, NEW)  # the newest holdout, after the change

    mine, theirs = evaluate(y, candidate.predict(x)), evaluate(y, champion.predict(x))
    assert theirs.auc < 0.5 < 0.75 < mine.auc
    decision = decide(
        mine, RELATIVE, rows=3000, prior_log_loss=0.69, champion=ChampionScore("1", theirs)
    )

    assert decision.promote, decision.reasons
    assert {c.status for c in decision.checks} == {"pass"}


def test_a_worse_candidate_is_not_promoted() -> None:
    """A candidate that learned only one of the two signals loses to the champion on the
    same holdout: refused, and the reasons say it was the champion comparison."""
    champion = _booster(*_world(2000, 1, NEW))
    candidate = _booster(*_world(2000, 2, (0.0, 1.0)))
    x, y = _world(1000, 3, NEW)

    decision = decide(
        evaluate(y, candidate.predict(x)),
        RELATIVE,
        rows=3000,
        prior_log_loss=0.69,
        champion=ChampionScore("1", evaluate(y, champion.predict(x))),
    )

    assert not decision.promote
    failed = {c.name for c in decision.checks if c.status == "fail"}
    assert {"champion_auc", "champion_log_loss"} <= failed
    assert any("< champion v1 same-holdout auc" in r for r in decision.reasons), decision.reasons


def test_a_badly_calibrated_candidate_is_refused() -> None:
    """Same ranking as the champion, but every score pushed 0.3 up: refused for calibration."""
    booster = _booster(*_world(2000, 1, NEW))
    x, y = _world(1000, 3, NEW)
    p = booster.predict(x)
    shifted = np.clip(p + 0.3, 0.0, 0.999)

    mine, theirs = evaluate(y, shifted), evaluate(y, p)
    decision = decide(mine, RELATIVE, rows=3000, champion=ChampionScore("1", theirs))

    assert mine.calibration_error > 0.2 > theirs.calibration_error
    assert not decision.promote
    [check] = [c for c in decision.checks if c.name == "calibration"]
    assert check.status == "fail" and "> max 0.1" in check.detail


def test_one_bad_slice_refuses_a_candidate_that_is_fine_on_average() -> None:
    """The candidate ranks as well as the champion everywhere but the top quartile of x0,
    where it guesses: the slice audit refuses it (other gates loosened to isolate it)."""
    x, y = _world(2000, 3, NEW)
    truth = 1 / (1 + np.exp(-(NEW[0] * x[:, 0] + NEW[1] * x[:, 1])))
    top = x[:, 0] >= np.quantile(x[:, 0], 0.75)
    guess = truth.copy()
    guess[top] = np.random.default_rng(9).permutation(truth[top])
    slices = cut_slices({"v.x0": x[:, 0]}, bins=4)
    gates = PromotionGates(
        min_rows=200, slices=["v.x0"], max_log_loss_increase=1.0, max_calibration_error=1.0
    )

    decision = decide(
        evaluate(y, guess, slices),
        gates,
        rows=3000,
        champion=ChampionScore("1", evaluate(y, truth, slices)),
        tolerance=0.5,
    )

    assert not decision.promote
    failed = [c for c in decision.checks if c.status == "fail"]
    assert [c.name for c in failed] == [f"slice v.x0 >= {np.quantile(x[:, 0], 0.75):.4g}"]
    passed = [c.name for c in decision.checks if c.status == "pass" and c.name.startswith("slice")]
    assert len(passed) == 3


def test_small_and_one_class_slices_are_reported_not_failed() -> None:
    """A slice under min_slice_rows, or where the AUC is undefined, is skipped with why."""
    y = np.array([0.0, 1.0] * 75 + [1.0] * 100)
    p = np.linspace(0.1, 0.9, len(y))
    group = np.array([0.0] * 150 + [1.0] * 100)  # second group: one class
    x = np.where(np.arange(len(y)) < 10, np.nan, group)  # 10 missing: a small slice
    slices = cut_slices({"v.g": x}, bins=4)
    gates = PromotionGates(min_rows=10, slices=["v.g"], max_calibration_error=1.0)
    ev = evaluate(y, p, slices)

    decision = decide(ev, gates, rows=250, champion=ChampionScore("1", ev), tolerance=0.5)

    skipped = {c.name: c.detail for c in decision.checks if c.status == "skipped"}
    assert "10 rows < min_slice_rows 50" in skipped[f"slice v.g {MISSING}"]
    assert "one class" in skipped["slice v.g >= 1"]
    assert not any(c.status == "fail" for c in decision.checks)


def test_cut_slices_bins_by_quantile_with_missing_apart() -> None:
    """Quartiles of the present values, NaN as its own slice, every row in one slice."""
    x = np.array([*range(100), np.nan, np.nan], dtype=float)
    slices = cut_slices({"v.x": x}, bins=4)
    assert [s.label for s in slices] == [
        "< 24.75",
        "[24.75, 49.5)",
        "[49.5, 74.25)",
        ">= 74.25",
        MISSING,
    ]
    assert [int(s.mask.sum()) for s in slices] == [25, 25, 25, 25, 2]
    assert np.sum([s.mask for s in slices], axis=0).tolist() == [1] * 102


def test_expected_calibration_error() -> None:
    """Calibrated scores have an ECE near their sampling noise; shifted ones show the shift."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 20000)
    y = (rng.random(20000) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, np.clip(p - 0.2, 0, 1)) == pytest.approx(0.2, abs=0.03)
    # 60 rows near 0.5: honest noise is large, so the gate allows for it.
    assert calibration_noise(np.full(60, 0.5)) == pytest.approx(0.163, abs=0.001)
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


# --- definitions and the trainer's champion scoring ----------------------------------


def _definitions(slices: list[str]) -> dict[str, Any]:
    return {
        "sources": [{"name": "s", "entity": "e", "fields": {"a": {"type": "float"}}}],
        "feature_views": [
            {
                "name": "v",
                "source": "s",
                "features": [
                    {"name": "a_last", "field": "a", "agg": "last"},
                    {"name": "a_mean", "field": "a", "agg": "mean", "window_s": 60},
                ],
            }
        ],
        "models": [{"name": "m", "features": ["v.a_last"], "promotion": {"slices": slices}}],
    }


def test_definitions_accept_slices_of_the_models_features() -> None:
    """A slice that is one of the model's features is accepted, with the defaults."""
    gates = parse_definitions(_definitions(["v.a_last"])).model("m").promotion
    assert gates.slices == ["v.a_last"]
    assert (gates.min_slice_rows, gates.max_slice_auc_drop, gates.slice_bins) == (50, 0.05, 4)
    assert (gates.min_gain_over_champion, gates.max_log_loss_increase) == (0.0, 0.02)
    assert gates.max_calibration_error == 0.1


@pytest.mark.parametrize("bad", ["v.a_mean", "v.nope", "a_last"])
def test_definitions_reject_a_slice_that_is_not_a_model_feature(bad: str) -> None:
    """A slice must be one of the model's own features: the error names the entry."""
    with pytest.raises(
        DefinitionsError, match=f"promotion slice '{bad}' is not one of its features"
    ):
        parse_definitions(_definitions([bad]))


class _OneBoosterRegistry:
    """Just enough registry for champion scoring: one booster for every version."""

    def __init__(self, booster: lgb.Booster | Exception) -> None:
        self.booster = booster

    def load_booster(self, model: str, version: str) -> lgb.Booster:
        if isinstance(self.booster, Exception):
            raise self.booster
        return self.booster


def _trained(columns: list[str]) -> TrainedModel:
    x, y = _world(400, 5, NEW)
    holdout = pd.DataFrame({columns[0]: x[:, 0], columns[1]: x[:, 1], LABEL: y})
    metrics = TrainingMetrics(
        auc=0.8, log_loss=0.5, rows=400, train_rows=0, holdout_rows=400, positive_rate=0.5
    )
    return TrainedModel(_booster(x, y), metrics, {}, columns, holdout)


@pytest.mark.parametrize(
    ("champion_columns", "scored"),
    [(["v__x0", "v__x1"], True), (["v__x0", "v__other"], False)],
)
def test_the_champion_is_scored_on_the_candidates_holdout(
    champion_columns: list[str], scored: bool
) -> None:
    """A champion with the candidate's features is evaluated on its holdout, slices
    included; one that reads other features is not compared (and says why)."""
    trained = _trained(["v__x0", "v__x1"])
    x, y = _world(500, 6, NEW)
    champion = lgb.train(
        {"objective": "binary", "verbosity": -1},
        lgb.Dataset(x, label=y, feature_name=champion_columns),
        num_boost_round=10,
    )
    slices = cut_slices({"v.x0": trained.holdout["v__x0"].to_numpy()})
    registry = cast(Registry, _OneBoosterRegistry(champion))

    result = _champion_score(registry, "m", "7", trained, slices)

    assert result.version == "7"
    if scored:
        assert result.evaluation is not None and result.evaluation.auc > 0.7
        assert len(result.evaluation.slices) == 4
    else:
        assert result.evaluation is None and "reads other features" in result.note


def test_an_unloadable_or_absent_champion_is_not_compared() -> None:
    """No champion, or one that fails to load: no evaluation, with the reason."""
    trained = _trained(["v__x0", "v__x1"])
    broken = cast(Registry, _OneBoosterRegistry(OSError("sha256 mismatch")))
    assert _champion_score(broken, "m", "2", trained, []).note.endswith("sha256 mismatch")
    assert _champion_score(broken, "m", None, trained, []) is NO_CHAMPION

"""The promotion rule as a table: gates, champion comparison, reasons."""

from __future__ import annotations

import math

import pytest

from libs.common.definitions import PromotionGates
from services.retrain.core.promotion import decide

GATES = PromotionGates(min_auc=0.6, min_rows=200)


@pytest.mark.parametrize(
    ("rows", "auc", "champion_auc", "promote", "reason"),
    [
        (1000, 0.80, None, True, "no champion auc to beat"),
        (199, 0.80, None, False, "rows 199 < min_rows 200"),
        (200, 0.60, None, True, "auc 0.6000 >= min_auc 0.6"),
        (1000, 0.59, None, False, "auc 0.5900 < min_auc 0.6"),
        (1000, math.nan, None, False, "auc undefined"),
        (1000, 0.80, 0.805, True, "auc 0.8000 >= champion"),  # within the 0.01 tolerance
        (1000, 0.80, 0.85, False, "auc 0.8000 < champion"),
        (1000, 0.90, 0.85, True, "auc 0.9000 >= champion"),
        (1000, 0.80, math.nan, True, "no champion auc to beat"),
        (100, 0.50, 0.90, False, "rows 100 < min_rows 200"),
    ],
)
def test_promotion_rule(
    rows: int, auc: float, champion_auc: float | None, promote: bool, reason: str
) -> None:
    """A candidate is promoted only when every gate passes; the reasons say which did not."""
    decision = decide({"rows": rows, "auc": auc}, GATES, champion_auc=champion_auc, tolerance=0.01)
    assert decision.promote is promote
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_every_failed_gate_is_reported() -> None:
    """Several failing gates are all listed, not only the first."""
    decision = decide({"rows": 10, "auc": 0.4}, GATES, champion_auc=0.9)
    assert not decision.promote
    # rows, fallback lift, absolute floor, champion
    assert len([r for r in decision.reasons if "<" in r]) == 4
    assert decision.summary.startswith("not promoted: ")


RELATIVE = PromotionGates(min_rows=200)  # the default: no absolute floor


def test_a_decayed_champion_is_replaced_by_a_better_candidate() -> None:
    """After a drift the champion scores 0.532 on the new holdout; a candidate at 0.549
    beats it and the fallback, so it is promoted (an absolute 0.6 floor kept the worse
    model before)."""
    metrics = {"rows": 1000, "auc": 0.549, "log_loss": 0.68, "positive_rate": 0.5}
    decision = decide(metrics, RELATIVE, champion_auc=0.532, champion_basis="same-holdout")
    assert decision.promote, decision.reasons


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"rows": 1000, "auc": 0.51, "log_loss": 0.6, "positive_rate": 0.5}, "< fallback 0.5"),
        ({"rows": 1000, "auc": 0.8, "log_loss": 0.75, "positive_rate": 0.5}, ">= base-rate prior"),
    ],
)
def test_a_candidate_must_beat_the_fallback(metrics: dict[str, float], reason: str) -> None:
    """No better than a constant score (AUC 0.5 + lift) or than the base-rate prior in
    log loss (ln 2 = 0.693 at a 50% rate): not promoted, with the reason."""
    decision = decide(metrics, RELATIVE, champion_auc=None)
    assert not decision.promote
    assert any(reason in r for r in decision.reasons), decision.reasons

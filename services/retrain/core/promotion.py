"""The promotion rule: when a newly trained version may become the champion."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from libs.common.definitions import PromotionGates

DEFAULT_AUC_TOLERANCE = 0.01


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and every check behind the answer (passed ones too)."""

    promote: bool
    reasons: tuple[str, ...]

    @property
    def summary(self) -> str:
        return ("promoted: " if self.promote else "not promoted: ") + "; ".join(self.reasons)


def decide(
    metrics: Mapping[str, float],
    gates: PromotionGates,
    *,
    champion_auc: float | None = None,
    champion_basis: str = "recorded",
    tolerance: float = DEFAULT_AUC_TOLERANCE,
) -> PromotionDecision:
    """Decide whether a candidate becomes champion.

    The rule: promote iff all of
      1. `rows >= gates.min_rows` (labelled rows the candidate was trained and tested on);
      2. it beats the fallback: `auc >= 0.5 + gates.min_auc_lift` (a constant score has
         AUC 0.5; a NaN AUC, a one-class holdout, fails) and its holdout log loss is
         below the constant training-base-rate predictor's ("prior_log_loss"; else the
         entropy of "positive_rate");
      2b. `auc >= gates.min_auc` when that absolute floor is set;
      3. when a champion exists and its AUC is known:
         `auc >= champion_auc - tolerance`, i.e. not worse than the champion by more
         than `tolerance` (a small slack so equal models on noisy holdouts still roll).

    Args:
        metrics: the candidate's metrics; reads "rows" and "auc".
        gates: the model's promotion gates from the definitions.
        champion_auc: the champion's AUC, or None when there is no champion (or no
            known AUC for it).
        champion_basis: how `champion_auc` was obtained ("same holdout" when the
            champion was scored on the candidate's holdout, else "recorded"); it only
            appears in the reasons.
        tolerance: allowed AUC shortfall against the champion.

    Returns:
        The decision with one reason per check.
    """
    rows = int(metrics.get("rows", 0))
    auc = float(metrics.get("auc", math.nan))
    reasons: list[str] = []
    ok = True

    if rows >= gates.min_rows:
        reasons.append(f"rows {rows} >= min_rows {gates.min_rows}")
    else:
        ok = False
        reasons.append(f"rows {rows} < min_rows {gates.min_rows}")

    floor = 0.5 + gates.min_auc_lift
    if math.isnan(auc):
        ok = False
        reasons.append("auc undefined (holdout has one class)")
    elif auc >= floor:
        reasons.append(f"auc {auc:.4f} >= fallback 0.5 + lift {gates.min_auc_lift}")
    else:
        ok = False
        reasons.append(f"auc {auc:.4f} < fallback 0.5 + lift {gates.min_auc_lift}")
    if gates.min_auc is not None and not math.isnan(auc):
        if auc >= gates.min_auc:
            reasons.append(f"auc {auc:.4f} >= min_auc {gates.min_auc}")
        else:
            ok = False
            reasons.append(f"auc {auc:.4f} < min_auc {gates.min_auc}")

    loss, prior = metrics.get("log_loss"), metrics.get("prior_log_loss")
    rate = metrics.get("positive_rate")
    if prior is None and rate is not None and 0.0 < rate < 1.0:
        prior = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    if loss is not None and prior is not None and not math.isnan(loss) and not math.isnan(prior):
        if loss < prior:
            reasons.append(f"log_loss {loss:.4f} < base-rate prior {prior:.4f}")
        else:
            ok = False
            reasons.append(f"log_loss {loss:.4f} >= base-rate prior {prior:.4f}")

    if champion_auc is None or math.isnan(champion_auc):
        reasons.append("no champion auc to beat")
    elif math.isnan(auc):
        pass  # already failed above; comparing NaN says nothing more
    elif auc >= champion_auc - tolerance:
        reasons.append(
            f"auc {auc:.4f} >= champion {champion_basis} auc {champion_auc:.4f} - {tolerance}"
        )
    else:
        ok = False
        reasons.append(
            f"auc {auc:.4f} < champion {champion_basis} auc {champion_auc:.4f} - {tolerance}"
        )
    return PromotionDecision(promote=ok, reasons=tuple(reasons))

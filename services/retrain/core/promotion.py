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
      2. `auc >= gates.min_auc` (holdout AUC; a NaN AUC, a one-class holdout, fails);
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

    if math.isnan(auc):
        ok = False
        reasons.append("auc undefined (holdout has one class)")
    elif auc >= gates.min_auc:
        reasons.append(f"auc {auc:.4f} >= min_auc {gates.min_auc}")
    else:
        ok = False
        reasons.append(f"auc {auc:.4f} < min_auc {gates.min_auc}")

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

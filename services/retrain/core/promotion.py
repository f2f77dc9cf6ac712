"""The promotion rule: when a newly trained version may become the champion.

Every gate is relative to something measured on the candidate's own (newest)
holdout: the fallback, and the champion scored on the same rows. A champion that
decayed with the world therefore cannot hold its place by an old AUC, and a
candidate cannot win by an absolute figure a decayed champion would fail too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from libs.common.definitions import PromotionGates
from services.retrain.core.evaluation import HoldoutEvaluation
from services.retrain.core.slices import SliceScore

DEFAULT_AUC_TOLERANCE = 0.01
# Thresholds are sums of configured decimals (0.8 + 0.02 is 0.8200000000000001):
# a candidate exactly on the line passes.
_ROUNDING = 1e-12

GateStatus = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class GateCheck:
    """One gate's verdict: `name` (e.g. "champion_auc"), pass/fail/skipped, and why."""

    name: str
    status: GateStatus
    detail: str

    @property
    def reason(self) -> str:
        return f"skipped {self.name}: {self.detail}" if self.status == "skipped" else self.detail


@dataclass(frozen=True)
class ChampionScore:
    """The champion as the comparison gates see it.

    Attributes:
        version: the champion's version; None when the model has none.
        evaluation: its scores on the candidate's holdout; None when it has no
            champion or the champion cannot score these rows (other features).
        note: why there is no evaluation, for the reasons.
    """

    version: str | None
    evaluation: HoldoutEvaluation | None = None
    note: str = "no champion"


NO_CHAMPION = ChampionScore(None)


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and every check behind the answer (passed ones too).

    Attributes:
        promote: every gate passed (skipped gates do not block).
        reasons: one line per check, in the order they were made.
        checks: the same checks as values (the model card lists them).
    """

    promote: bool
    reasons: tuple[str, ...]
    checks: tuple[GateCheck, ...] = ()

    @property
    def summary(self) -> str:
        return ("promoted: " if self.promote else "not promoted: ") + "; ".join(self.reasons)


def _check(name: str, passed: bool, detail: str) -> GateCheck:
    return GateCheck(name, "pass" if passed else "fail", detail)


def _fallback_checks(
    candidate: HoldoutEvaluation, gates: PromotionGates, rows: int, prior_log_loss: float
) -> list[GateCheck]:
    """Enough rows, better than the fallback's constant score, the optional floor."""
    auc, loss = candidate.auc, candidate.log_loss
    cmp = ">=" if rows >= gates.min_rows else "<"
    out = [_check("min_rows", cmp == ">=", f"rows {rows} {cmp} min_rows {gates.min_rows}")]
    if math.isnan(auc):
        out.append(_check("fallback_auc", False, "auc undefined (holdout has one class)"))
    else:
        ok = auc >= 0.5 + gates.min_auc_lift - _ROUNDING
        cmp = ">=" if ok else "<"
        out.append(
            _check(
                "fallback_auc", ok, f"auc {auc:.4f} {cmp} fallback 0.5 + lift {gates.min_auc_lift}"
            )
        )
        if gates.min_auc is not None:
            ok = auc >= gates.min_auc
            cmp = ">=" if ok else "<"
            out.append(_check("min_auc", ok, f"auc {auc:.4f} {cmp} min_auc {gates.min_auc}"))
    if math.isnan(loss) or math.isnan(prior_log_loss):
        out.append(GateCheck("prior_log_loss", "skipped", "no base-rate prior log loss known"))
    else:
        ok = loss < prior_log_loss
        cmp = "<" if ok else ">="
        out.append(
            _check(
                "prior_log_loss",
                ok,
                f"log_loss {loss:.4f} {cmp} base-rate prior {prior_log_loss:.4f}",
            )
        )
    return out


def _calibration_check(
    candidate: HoldoutEvaluation, gates: PromotionGates, champion: HoldoutEvaluation | None
) -> GateCheck:
    """ECE within the limit plus sampling noise, or at least no worse than the champion's.

    The champion leg keeps recovery possible: right after a drift both models may be
    off, and a candidate better calibrated than the one serving is still progress.
    """
    ece = candidate.calibration_error
    if math.isnan(ece):
        return GateCheck("calibration", "skipped", "calibration error undefined (no rows)")
    limit = gates.max_calibration_error + candidate.calibration_noise
    within = f"max {gates.max_calibration_error} + noise {candidate.calibration_noise:.4f}"
    if ece <= limit + _ROUNDING:
        return _check("calibration", True, f"calibration error {ece:.4f} <= {within}")
    if champion is not None and ece <= champion.calibration_error:
        return _check(
            "calibration",
            True,
            f"calibration error {ece:.4f} > {within}, but <= champion's "
            f"{champion.calibration_error:.4f}",
        )
    vs = "" if champion is None else f" and champion's {champion.calibration_error:.4f}"
    return _check("calibration", False, f"calibration error {ece:.4f} > {within}{vs}")


def _champion_checks(
    candidate: HoldoutEvaluation,
    gates: PromotionGates,
    champion: ChampionScore,
    tolerance: float,
) -> list[GateCheck]:
    """AUC gain and log loss against the champion scored on the same holdout."""
    ev = champion.evaluation
    if ev is None:
        return [
            GateCheck("champion_auc", "skipped", champion.note),
            GateCheck("champion_log_loss", "skipped", champion.note),
        ]
    out = []
    auc, required = candidate.auc, ev.auc + gates.min_gain_over_champion - tolerance
    if math.isnan(auc) or math.isnan(ev.auc):
        out.append(GateCheck("champion_auc", "skipped", "auc undefined on this holdout"))
    else:
        ok = auc >= required - _ROUNDING
        cmp = ">=" if ok else "<"
        out.append(
            _check(
                "champion_auc",
                ok,
                f"auc {auc:.4f} {cmp} champion v{champion.version} same-holdout auc "
                f"{ev.auc:.4f} + gain {gates.min_gain_over_champion} - tolerance {tolerance}",
            )
        )
    loss, limit = candidate.log_loss, ev.log_loss + gates.max_log_loss_increase
    ok = loss <= limit + _ROUNDING
    cmp = "<=" if ok else ">"
    out.append(
        _check(
            "champion_log_loss",
            ok,
            f"log_loss {loss:.4f} {cmp} champion v{champion.version} log_loss "
            f"{ev.log_loss:.4f} + {gates.max_log_loss_increase}",
        )
    )
    return out


def _slice_check(cand: SliceScore, champ: SliceScore | None, gates: PromotionGates) -> GateCheck:
    name = f"slice {cand.key}"
    if champ is None:
        return GateCheck(name, "skipped", "the champion was not scored on this slice")
    if cand.rows < gates.min_slice_rows:
        return GateCheck(
            name, "skipped", f"{cand.rows} rows < min_slice_rows {gates.min_slice_rows}"
        )
    if math.isnan(cand.auc) or math.isnan(champ.auc):
        return GateCheck(name, "skipped", f"auc undefined on {cand.rows} rows (one class)")
    ok = cand.auc >= champ.auc - gates.max_slice_auc_drop - _ROUNDING
    cmp = ">=" if ok else "<"
    return _check(
        name,
        ok,
        f"slice {cand.key} auc {cand.auc:.4f} {cmp} champion {champ.auc:.4f} "
        f"- {gates.max_slice_auc_drop} ({cand.rows} rows)",
    )


def slice_audit(
    candidate: HoldoutEvaluation, gates: PromotionGates, champion: ChampionScore
) -> list[GateCheck]:
    """Per configured slice: the candidate may not lose more than `max_slice_auc_drop`.

    Slices smaller than `min_slice_rows` or where either AUC is undefined (one class)
    are reported as skipped, not failed: their AUC says too little to refuse on.
    """
    if not gates.slices:
        return []
    if champion.evaluation is None:
        return [GateCheck("slices", "skipped", champion.note)]
    theirs = {s.key: s for s in champion.evaluation.slices}
    return [_slice_check(s, theirs.get(s.key), gates) for s in candidate.slices]


def decide(
    candidate: HoldoutEvaluation,
    gates: PromotionGates,
    *,
    rows: int,
    prior_log_loss: float = math.nan,
    champion: ChampionScore = NO_CHAMPION,
    tolerance: float = DEFAULT_AUC_TOLERANCE,
) -> PromotionDecision:
    """Decide whether a candidate becomes champion.

    Promote iff no check fails (skipped ones do not block):
      1. `rows >= gates.min_rows` (labelled rows the candidate was trained and tested on);
      2. it beats the fallback: `auc >= 0.5 + gates.min_auc_lift` (a NaN AUC, a
         one-class holdout, fails) and log loss `< prior_log_loss`, the constant
         training-base-rate predictor's on the holdout; `auc >= gates.min_auc` when set;
      3. calibration: ECE `<= gates.max_calibration_error` plus the ECE sampling noise
         alone would give, or no worse than the champion's ECE;
      4. against the champion scored on the same holdout (skipped when there is none
         or it cannot score these rows):
         `auc >= champion_auc + gates.min_gain_over_champion - tolerance` and
         `log_loss <= champion_log_loss + gates.max_log_loss_increase`;
      5. slice audit (`slice_audit`) over `gates.slices`.

    Args:
        candidate: the candidate's holdout evaluation (with slices when configured).
        gates: the model's promotion gates from the definitions.
        rows: labelled rows the candidate was trained and tested on.
        prior_log_loss: the base-rate prior's holdout log loss (NaN: check skipped).
        champion: the champion and its evaluation on the same holdout.
        tolerance: the service-wide AUC slack against the champion
            (`SIGNALOPS_AUC_TOLERANCE`), so equal models on noisy holdouts still roll.

    Returns:
        The decision with one check (and reason) per gate.
    """
    checks = [
        *_fallback_checks(candidate, gates, rows, prior_log_loss),
        _calibration_check(candidate, gates, champion.evaluation),
        *_champion_checks(candidate, gates, champion, tolerance),
        *slice_audit(candidate, gates, champion),
    ]
    return PromotionDecision(
        promote=all(c.status != "fail" for c in checks),
        reasons=tuple(c.reason for c in checks),
        checks=tuple(checks),
    )

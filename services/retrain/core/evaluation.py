"""Holdout metrics any model's scores get, so champion and candidate are measured alike.

AUC, log loss, expected calibration error and AUC per slice, from labels and scores
(pure numpy and scikit-learn): the promotion gates compare these, the model card
records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from services.retrain.core.slices import Slice, SliceScore, slice_scores

CALIBRATION_BINS = 10
_EPS = 1e-7


@dataclass(frozen=True)
class HoldoutEvaluation:
    """One model's scores judged on one holdout.

    Attributes:
        auc: ranking quality; NaN when the holdout has one class.
        log_loss: mean log loss (nats), scores clipped to [1e-7, 1 - 1e-7].
        calibration_error: expected calibration error over equal-count score bins.
        calibration_noise: the calibration error a perfectly calibrated model with
            these scores would show from sampling alone (expected value); small
            holdouts get a matching allowance instead of false refusals.
        rows: holdout rows.
        slices: AUC per slice of the holdout (empty when no slices are configured).
    """

    auc: float
    log_loss: float
    calibration_error: float
    rows: int
    calibration_noise: float = 0.0
    slices: tuple[SliceScore, ...] = ()


def _equal_count_bins(p: np.ndarray, bins: int) -> list[np.ndarray]:
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(bins, len(p))) if len(b)]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |observed rate - mean score| over equal-count score bins, weighted by size.

    Equal-count bins (not equal-width) keep every bin populated when the scores
    crowd near 0 or 1, as a confident model's do.

    Args:
        y: labels (0/1).
        p: scores of the same rows.
        bins: number of bins (fewer when there are fewer rows).

    Returns:
        The error in [0, 1]; NaN for no rows.
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return math.nan
    return float(
        sum(len(b) * abs(y[b].mean() - p[b].mean()) for b in _equal_count_bins(p, bins)) / len(p)
    )


def calibration_noise(p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The expected calibration error of a perfectly calibrated model with scores `p`.

    Under perfect calibration a bin's observed rate minus its mean score has mean 0
    and variance sum(p(1-p)) / n^2; its expected absolute value (normal
    approximation) is sqrt(2/pi) times the standard deviation. With 60 holdout rows
    near 0.5 this is about 0.16: a raw threshold of 0.1 would refuse most honest
    candidates trained on a short post-drift window.

    Args:
        p: scores.
        bins: as for `expected_calibration_error`.

    Returns:
        The expected error from sampling alone; 0.0 for no rows.
    """
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    spread = sum(math.sqrt(float((p[b] * (1 - p[b])).sum())) for b in _equal_count_bins(p, bins))
    return math.sqrt(2 / math.pi) * spread / len(p)


def evaluate(y: np.ndarray, p: np.ndarray, slices: list[Slice] | None = None) -> HoldoutEvaluation:
    """Judge scores `p` against labels `y` of one holdout.

    Args:
        y: the holdout's labels (0/1).
        p: a model's scores of the same rows.
        slices: slices of those rows to score too (`cut_slices`).

    Returns:
        AUC, log loss, calibration error (and its sampling noise) and slice AUCs.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    two_classes = len(np.unique(y)) == 2
    return HoldoutEvaluation(
        auc=float(roc_auc_score(y, p)) if two_classes else math.nan,
        log_loss=float(log_loss(y, p, labels=[0.0, 1.0])) if len(y) else math.nan,
        calibration_error=expected_calibration_error(y, p),
        calibration_noise=calibration_noise(p),
        rows=len(y),
        slices=slice_scores(y, p, slices or []),
    )

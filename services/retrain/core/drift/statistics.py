"""The two statistics of feature and prediction drift: PSI and the two-sample KS test."""

from __future__ import annotations

import numpy as np
from scipy import stats

from services.retrain.core.drift.reference import ColumnReference

_EPS = 1e-4  # smoothing: an empty bin must not make PSI infinite


def psi(reference: ColumnReference, values: np.ndarray) -> float:
    """Population stability index of `values` against the reference's bins."""
    counts = reference.bin_counts(values).astype(np.float64)
    actual = (counts + _EPS) / (counts.sum() + _EPS * len(counts))
    expected = (np.asarray(reference.shares) + _EPS) / (1.0 + _EPS * len(counts))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_pvalue(reference: ColumnReference, values: np.ndarray) -> float:
    """p-value of the two-sample KS test of `values` against the reference sample."""
    if not reference.sample or len(values) == 0:
        return 1.0
    return float(stats.ks_2samp(np.asarray(reference.sample), values).pvalue)

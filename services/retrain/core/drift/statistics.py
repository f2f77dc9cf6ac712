"""The two statistics of feature and prediction drift: PSI and the two-sample KS test."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from services.retrain.core.drift.reference import ColumnReference

_EPS = 1e-4  # smoothing: an empty bin must not make PSI infinite

# Memo of KS p-values, (reference size, window size, D * lcm(sizes)) -> p-value, filled
# from scipy's own `ks_2samp` (module-level and bounded; it only ever holds values
# scipy returned). scipy's p-value depends on the statistic D and the two sizes only,
# and D is a multiple of 1 / lcm(sizes): a monitor checking windows of one size against
# one reference meets few distinct D values, so after warm-up the test costs one sort
# and two searchsorted calls instead of a ks_2samp call (about 1 ms, the monitor's
# hot spot: bench/monitor_throughput.py, docs/benchmarks.md).
_KS_PVALUES: dict[tuple[int, int, int], float] = {}
_KS_MEMO_MAX = 100_000


def psi(reference: ColumnReference, values: np.ndarray) -> float:
    """Population stability index of `values` against the reference's bins."""
    counts = reference.bin_counts(values).astype(np.float64)
    actual = (counts + _EPS) / (counts.sum() + _EPS * len(counts))
    expected = (reference.shares_array + _EPS) / (1.0 + _EPS * len(counts))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_statistic(sorted_reference: np.ndarray, sorted_values: np.ndarray) -> float:
    """The two-sample KS statistic D, computed as scipy's `ks_2samp` computes it."""
    both = np.concatenate([sorted_reference, sorted_values])
    cdf1 = np.searchsorted(sorted_reference, both, side="right") / len(sorted_reference)
    cdf2 = np.searchsorted(sorted_values, both, side="right") / len(sorted_values)
    diffs = cdf1 - cdf2
    return float(max(np.clip(-np.min(diffs), 0, 1), np.max(diffs)))


def ks_pvalue(reference: ColumnReference, values: np.ndarray) -> float:
    """p-value of the two-sample KS test of `values` against the reference sample.

    The same value as `scipy.stats.ks_2samp(reference.sample, values).pvalue`: taken
    from the memo when scipy already answered this statistic for these sizes.
    """
    if not reference.sample or len(values) == 0:
        return 1.0
    ref = reference.sorted_sample
    x = np.sort(np.asarray(values, dtype=np.float64))
    n1, n2 = len(ref), len(x)
    lcm = n1 // math.gcd(n1, n2) * n2
    key = (n1, n2, round(ks_statistic(ref, x) * lcm))
    p = _KS_PVALUES.get(key)
    if p is None:
        p = float(stats.ks_2samp(ref, x).pvalue)
        if len(_KS_PVALUES) < _KS_MEMO_MAX:
            _KS_PVALUES[key] = p
    return p

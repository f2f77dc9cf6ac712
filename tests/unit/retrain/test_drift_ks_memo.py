"""The memoised KS test gives exactly scipy's p-values, for any sizes, ties and shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from services.retrain.core.drift.reference import ColumnReference
from services.retrain.core.drift.statistics import ks_pvalue, ks_statistic


@pytest.mark.parametrize(
    ("n_ref", "n", "shift", "decimals"),
    [
        (2000, 500, 0.0, None),
        (2000, 500, 0.3, None),
        (2000, 1000, 0.05, None),
        (300, 77, 0.0, None),
        (2000, 500, 0.0, 0),  # heavy ties: values rounded to integers
        (15, 9, 1.0, 1),
    ],
)
def test_ks_pvalue_equals_scipy(n_ref: int, n: int, shift: float, decimals: int | None) -> None:
    """Every window's p-value (memo hit or miss) is the one scipy's ks_2samp returns."""
    rng = np.random.default_rng(n_ref + n)
    train = rng.normal(size=n_ref * 3)
    if decimals is not None:
        train = np.round(train, decimals)
    reference = ColumnReference.of(train)
    sample = np.asarray(reference.sample)
    for _ in range(40):  # repeated windows hit the memo
        x = rng.normal(loc=shift, size=n)
        if decimals is not None:
            x = np.round(x, decimals)
        expected = stats.ks_2samp(sample, x)
        assert ks_pvalue(reference, x) == pytest.approx(expected.pvalue, rel=1e-12, abs=1e-300)
        assert ks_statistic(reference.sorted_sample, np.sort(x)) == pytest.approx(
            expected.statistic, abs=1e-12
        )


def test_empty_inputs_are_no_evidence() -> None:
    """No reference sample or no values: p-value 1."""
    assert ks_pvalue(ColumnReference.of([]), np.array([1.0, 2.0])) == 1.0
    assert ks_pvalue(ColumnReference.of([1.0, 2.0, 3.0]), np.array([])) == 1.0

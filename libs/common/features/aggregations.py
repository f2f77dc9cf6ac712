"""Aggregations over the values of one field inside a window.

Each takes the window's values (oldest first) and returns a float or None
(no value: LightGBM sees it as missing). They are the only feature math there
is, so streaming and training cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Values = Sequence[Any]


def _numeric(values: Values) -> np.ndarray:
    arr = np.fromiter(
        (float(v) for v in values if v is not None and not isinstance(v, str)),
        dtype=float,
    )
    return arr[~np.isnan(arr)]


def agg_last(values: Values, _equals: Any = None) -> float | None:
    for v in reversed(values):
        if v is not None and not isinstance(v, str) and v == v:  # v == v skips NaN
            return float(v)
    return None


def agg_mean(values: Values, _equals: Any = None) -> float | None:
    arr = _numeric(values)
    return float(arr.mean()) if arr.size else None


def agg_min(values: Values, _equals: Any = None) -> float | None:
    arr = _numeric(values)
    return float(arr.min()) if arr.size else None


def agg_max(values: Values, _equals: Any = None) -> float | None:
    arr = _numeric(values)
    return float(arr.max()) if arr.size else None


def agg_sum(values: Values, _equals: Any = None) -> float | None:
    arr = _numeric(values)
    return float(arr.sum())


def agg_count(values: Values, _equals: Any = None) -> float | None:
    return float(sum(1 for v in values if v is not None))


def agg_std(values: Values, _equals: Any = None) -> float | None:
    arr = _numeric(values)
    return float(arr.std(ddof=1)) if arr.size >= 2 else None


def agg_fraction(values: Values, equals: Any = None) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(sum(1 for v in present if v == equals)) / len(present)


AGGREGATIONS: dict[str, Callable[[Values, Any], float | None]] = {
    "last": agg_last,
    "mean": agg_mean,
    "min": agg_min,
    "max": agg_max,
    "sum": agg_sum,
    "count": agg_count,
    "std": agg_std,
    "fraction": agg_fraction,
}

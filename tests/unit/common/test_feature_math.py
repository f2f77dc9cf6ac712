"""Aggregations and point-in-time feature computation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.definitions import FeatureSpec, FeatureView
from libs.common.features import AGGREGATIONS, EventHistory, compute_view, to_row
from libs.common.features.aggregations import agg_mean


@pytest.mark.parametrize(
    ("agg", "values", "equals", "expected"),
    [
        ("last", [1.0, 2.0, None], None, 2.0),
        ("last", [], None, None),
        ("mean", [1, 2, 3], None, 2.0),
        ("mean", [None, float("nan")], None, None),
        ("min", [3, 1, 2], None, 1.0),
        ("max", [3, 1, 2], None, 3.0),
        ("sum", [1, 2, None], None, 3.0),
        ("count", [1, None, 3], None, 2.0),
        ("std", [1.0], None, None),
        ("std", [1.0, 3.0], None, pytest.approx(math.sqrt(2))),
        ("fraction", ["a", "b", "a", None], "a", pytest.approx(2 / 3)),
        ("fraction", [None], "a", None),
    ],
)
def test_aggregations(agg: str, values: list[object], equals: object, expected: object) -> None:
    """Each aggregation returns its value, or None when the window holds none."""
    assert AGGREGATIONS[agg](values, equals) == expected


VIEW = FeatureView(
    name="v",
    source="s",
    features=[
        FeatureSpec(name="x_last", field="x", agg="last"),
        FeatureSpec(name="x_mean_10", field="x", agg="mean", window_s=10),
        FeatureSpec(name="n", field="x", agg="count"),
    ],
)


def test_events_after_as_of_are_invisible() -> None:
    """Point-in-time: features as of t ignore later events."""
    h = EventHistory.from_events(
        [("a", 0.0, {"x": 1}), ("b", 5.0, {"x": 3}), ("c", 20.0, {"x": 9})]
    )
    assert compute_view(VIEW, h, 5.0) == {"x_last": 3.0, "x_mean_10": 2.0, "n": 2.0}
    assert compute_view(VIEW, h, 20.0) == {"x_last": 9.0, "x_mean_10": 9.0, "n": 3.0}


def test_duplicate_event_ids_count_once() -> None:
    """Redelivered events do not change features."""
    h = EventHistory()
    assert h.add("a", 1.0, {"x": 1})
    assert not h.add("a", 1.0, {"x": 1})
    assert compute_view(VIEW, h, 1.0)["n"] == 1.0


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1))
def test_mean_is_between_min_and_max(values: list[float]) -> None:
    """The mean of any finite values lies between their min and max."""
    m = agg_mean(values)
    assert m is not None
    assert min(values) - 1e-6 * (1 + abs(min(values))) <= m
    assert m <= max(values) + 1e-6 * (1 + abs(max(values)))


def test_missing_features_become_nan_in_model_rows() -> None:
    """A feature absent from the store is NaN (LightGBM's missing), never 0."""
    from libs.common.definitions import ModelDefinition

    model = ModelDefinition(name="m", features=["v.x_last", "v.n"])
    row = to_row(model, {"v": {"x_last": 2.0}})
    assert row[0] == 2.0 and math.isnan(row[1])

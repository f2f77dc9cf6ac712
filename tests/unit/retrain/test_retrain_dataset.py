"""The label join, pure: point in time, prediction anchors, horizon, dedup, retention."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from libs.common.definitions import parse_definitions
from services.retrain.core.dataset import (
    LABEL,
    OUTCOME_ID,
    TS,
    JoinSpec,
    as_of_time,
    combined_outcomes,
    combined_predictions,
    combined_signals,
    entity_rows,
    rows_for_entity,
)

DEFS = parse_definitions(
    {
        "sources": [
            {
                "name": "meter",
                "version": 2,
                "entity": "house",
                "fields": {
                    "x": {"type": "float"},
                    "y": {"type": "float", "required": False},
                    "mode": {"type": "str", "allowed": ["a", "b"]},
                },
            }
        ],
        "feature_views": [
            {
                "name": "usage",
                "source": "meter",
                "retention_s": 1000,
                "features": [
                    {"name": "x_last", "field": "x", "agg": "last"},
                    {"name": "x_sum_60", "field": "x", "agg": "sum", "window_s": 60},
                    {"name": "n", "field": "x", "agg": "count"},
                    {"name": "b_share", "field": "mode", "agg": "fraction", "equals": "b"},
                    {"name": "y_last", "field": "y", "agg": "last"},
                ],
            }
        ],
        "models": [
            {
                "name": "m",
                "features": [
                    "usage.x_last",
                    "usage.x_sum_60",
                    "usage.n",
                    "usage.b_share",
                    "usage.y_last",
                ],
                "label_horizon_s": 30,
            }
        ],
    }
)
SPEC = JoinSpec.of(DEFS, "m")


def _signals(
    *events: tuple[str, float, float], source: str = "meter", version: int = 2, mode: str = "a"
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [e[0] for e in events],
            "source": source,
            "schema_version": version,
            "entity_id": "h1",
            "ts": [e[1] for e in events],
            "fields_json": [json.dumps({"x": e[2], "mode": mode}) for e in events],
        }
    )


def _outcomes(*rows: tuple[str, float, float, str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "model": "m",
            "entity_id": "h1",
            "ts": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "prediction_id": [r[3] for r in rows],
        }
    )


def _predictions(*rows: tuple[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "model": "m",
            "entity_id": "h1",
            "ts": [r[1] for r in rows],
        }
    )


def _row(frame: pd.DataFrame, outcome_id: str) -> dict[str, float]:
    return frame.set_index(OUTCOME_ID).loc[outcome_id].to_dict()


@pytest.mark.parametrize(
    ("outcome_ts", "prediction_id", "horizon", "expected"),
    [
        (1000.0, None, 0.0, 1000.0),
        (1000.0, None, 30.0, 970.0),
        (1000.0, "p1", 30.0, 400.0),  # a logged prediction anchors the join, no horizon
        (1000.0, "unknown", 30.0, 970.0),  # not logged: fall back to the horizon
    ],
)
def test_as_of_time_table(
    outcome_ts: float, prediction_id: str | None, horizon: float, expected: float
) -> None:
    """As-of time is the named prediction's time when logged, else outcome time - horizon."""
    assert as_of_time(outcome_ts, prediction_id, {"p1": 400.0}, horizon) == expected


def test_signal_after_as_of_never_leaks() -> None:
    """A signal later than the as-of time (outcome - horizon) is invisible to the row."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 200.0, 5.0))
    # o1 at 210 joins as of 180: only s1. o2 at 230 joins as of 200: s2 counts (inclusive).
    frame = entity_rows(
        SPEC, "h1", signals, _outcomes(("o1", 210.0, 1.0, None), ("o2", 230.0, 0.0, None))
    )
    o1, o2 = _row(frame, "o1"), _row(frame, "o2")
    assert (o1["usage__x_last"], o1["usage__n"], o1[TS]) == (1.0, 1.0, 180.0)
    assert (o2["usage__x_last"], o2["usage__n"], o2[TS]) == (5.0, 2.0, 200.0)
    assert o2["usage__x_sum_60"] == 5.0  # s1 is outside the 60 s window as of 200
    assert (o1[LABEL], o2[LABEL]) == (1.0, 0.0)


def test_prediction_id_joins_at_the_prediction_time() -> None:
    """An outcome naming a logged prediction gets the features as of that prediction."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 500.0, 9.0))
    outcomes = _outcomes(("o1", 900.0, 1.0, "p1"), ("o2", 900.0, 1.0, "p-not-logged"))
    frame = entity_rows(SPEC, "h1", signals, outcomes, _predictions(("p1", 150.0)))
    assert _row(frame, "o1")["usage__x_last"] == 1.0
    assert _row(frame, "o1")[TS] == 150.0
    assert _row(frame, "o2")["usage__x_last"] == 9.0  # 900 - 30 s horizon, after s2
    assert _row(frame, "o2")[TS] == 870.0


def test_duplicates_count_once() -> None:
    """Replayed signals and outcomes (same event id) do not change the rows."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 120.0, 2.0))
    outcomes = _outcomes(("o1", 160.0, 1.0, None))  # as of 130: both in the 60 s window
    clean = entity_rows(SPEC, "h1", signals, outcomes)
    doubled = entity_rows(
        SPEC, "h1", pd.concat([signals, signals, signals.iloc[:1]]), pd.concat([outcomes, outcomes])
    )
    pd.testing.assert_frame_equal(clean, doubled)
    assert len(doubled) == 1
    assert _row(doubled, "o1")["usage__n"] == 2.0
    assert _row(doubled, "o1")["usage__x_sum_60"] == 3.0


def test_other_sources_and_schema_versions_are_ignored() -> None:
    """Only signals of the view's source at the source's current version feed features."""
    signals = pd.concat(
        [
            _signals(("s1", 100.0, 1.0)),
            _signals(("old", 110.0, 50.0), version=1),
            _signals(("other", 120.0, 70.0), source="elsewhere", version=2),
        ]
    )
    frame = entity_rows(SPEC, "h1", signals, _outcomes(("o1", 200.0, 1.0, None)))
    assert _row(frame, "o1")["usage__x_last"] == 1.0
    assert _row(frame, "o1")["usage__n"] == 1.0


def test_cold_start_outcome_is_dropped() -> None:
    """An outcome whose entity had no signal yet at its as-of time yields no row."""
    frame = entity_rows(
        SPEC,
        "h1",
        _signals(("s1", 500.0, 1.0)),
        _outcomes(("early", 100.0, 1.0, None), ("late", 600.0, 0.0, None)),
    )
    assert list(frame[OUTCOME_ID]) == ["late"]


def test_retention_hides_events_the_online_state_dropped() -> None:
    """Events older than the source's retention (1000 s here) are invisible, as online."""
    frame = entity_rows(
        SPEC,
        "h1",
        _signals(("s1", 100.0, 1.0), ("s2", 1500.0, 2.0)),
        _outcomes(("o1", 2400.0, 1.0, None)),
    )  # as of 2370: s1 expired
    row = _row(frame, "o1")
    assert (row["usage__x_last"], row["usage__n"]) == (2.0, 1.0)


def test_features_are_the_vector_serve_held_not_a_recomputation() -> None:
    """Between events the row keeps the vector of the last event, as the online store does."""
    frame = entity_rows(
        SPEC, "h1", _signals(("s1", 100.0, 1.0)), _outcomes(("o1", 400.0, 1.0, None))
    )
    row = _row(frame, "o1")  # joins as of 370; the online vector was computed at 100
    assert row["usage__x_sum_60"] == 1.0  # not 0.0: the window is anchored at 100
    assert row[TS] == 370.0


def test_missing_values_are_nan_and_strings_become_fractions() -> None:
    """An absent optional field gives NaN; a str field enters only through `fraction`."""
    frame = entity_rows(
        SPEC, "h1", _signals(("s1", 100.0, 1.0), mode="b"), _outcomes(("o1", 130.0, 1.0, None))
    )
    row = _row(frame, "o1")
    assert math.isnan(row["usage__y_last"])
    assert row["usage__b_share"] == 1.0
    assert row["usage__x_last"] == 1.0


def test_combined_group_gives_the_same_rows_as_the_direct_join() -> None:
    """The Ray Data path (combined schema, grouped by entity) equals the direct join."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 160.0, 3.0))
    outcomes = _outcomes(("o1", 200.0, 1.0, "p1"), ("o2", 400.0, 0.0, None))
    predictions = _predictions(("p1", 120.0))
    group = pd.concat(
        [
            combined_signals(signals, SPEC),
            combined_outcomes(outcomes, SPEC),
            combined_predictions(predictions, SPEC),
        ],
        ignore_index=True,
    )
    direct = entity_rows(SPEC, "h1", signals, outcomes, predictions)
    pd.testing.assert_frame_equal(rows_for_entity(group, SPEC), direct)
    assert list(direct.columns) == SPEC.columns

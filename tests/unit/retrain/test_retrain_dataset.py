"""The label join over signals, pure: query times, arrival visibility, dedup, cold starts."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from libs.common.definitions import parse_definitions
from libs.common.features.engine import EventColumns, States, apply, field_columns, vectors
from services.retrain.core.dataset import (
    LABEL,
    OUTCOME_ID,
    SIGNAL_COLUMNS,
    TS,
    JoinSpec,
    query_times,
    signal_rows,
)

DEFS = parse_definitions(
    {
        "sources": [
            {
                "name": "meter",
                "version": 2,
                "entity": "house",
                "allowed_lateness_s": 10_000,
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
                    {"name": "mode_last", "field": "mode", "agg": "last"},
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
                    "usage.mode_last",
                ],
                "label_horizon_s": 30,
            }
        ],
    }
)
SPEC = JoinSpec.of(DEFS, "m")

Event = tuple[str, float, float]  # (event id, event time, x)


def _signals(
    *events: Event,
    source: str = "meter",
    version: int = 2,
    mode: str = "a",
    entity: str = "h1",
    arrival_lag: float = 0.0,
    offsets: list[int] | None = None,
) -> pd.DataFrame:
    """Signal rows as the features service stores them, consumed at offsets 0, 1, ..."""
    return pd.DataFrame(
        {
            "event_id": [e[0] for e in events],
            "entity_id": entity,
            "ts": [e[1] for e in events],
            "arrival_ts": [e[1] + arrival_lag for e in events],
            "topic": "signals.valid",
            "partition": 0,
            "offset": offsets if offsets is not None else list(range(len(events))),
            "fields_json": [json.dumps({"x": e[2], "mode": mode}) for e in events],
            "source": source,
            "schema_version": version,
        },
        columns=SIGNAL_COLUMNS,
    )


def _outcomes(*rows: tuple[str, float, float, str | None], entity: str = "h1") -> pd.DataFrame:
    """(event id, ts, label, prediction id) rows, as served_rows leaves them."""
    return pd.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "entity_id": entity,
            "ts": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "prediction_id": [r[3] or "" for r in rows],
        }
    )


def _anchors(*rows: tuple[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"event_id": [r[0] for r in rows], "entity_id": "h1", "ts": [r[1] for r in rows]},
        columns=["event_id", "entity_id", "ts"],
    )


def _join(signals: pd.DataFrame, outcomes: pd.DataFrame, anchors: pd.DataFrame | None = None):  # type: ignore[no-untyped-def]
    return signal_rows(SPEC, signals, outcomes, _anchors() if anchors is None else anchors)


def _row(frame: pd.DataFrame, outcome_id: str) -> dict[str, object]:
    return frame.set_index(OUTCOME_ID).loc[outcome_id].to_dict()


@pytest.mark.parametrize(
    ("prediction_id", "horizon", "expected"),
    [
        (None, 0.0, 1000.0),
        (None, 30.0, 970.0),
        ("p1", 30.0, 400.0),  # a logged answer anchors the join, no horizon
        ("unknown", 30.0, None),  # an answer the log lacks: not joined at label time
    ],
)
def test_query_times_table(
    prediction_id: str | None, horizon: float, expected: float | None
) -> None:
    """The query time is the named answer's time, else label time minus the horizon."""
    queries = query_times(
        _outcomes(("o1", 1000.0, 1.0, prediction_id)), _anchors(("p1", 400.0)), horizon
    )
    assert list(queries["at"]) == ([] if expected is None else [expected])


def test_signal_after_the_query_time_never_leaks() -> None:
    """A signal later than the query time (label time - horizon) is invisible to the row."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 200.0, 5.0))
    # o1 at 210 queries at 180: only s1. o2 at 230 queries at 200: s2 counts (inclusive).
    frame, cold = _join(signals, _outcomes(("o1", 210.0, 1.0, None), ("o2", 230.0, 0.0, None)))
    o1, o2 = _row(frame, "o1"), _row(frame, "o2")
    assert (o1["usage__x_last"], o1["usage__n"], o1[TS]) == (1.0, 1.0, 180.0)
    assert (o2["usage__x_last"], o2["usage__n"], o2[TS]) == (5.0, 2.0, 200.0)
    assert o2["usage__x_sum_60"] == 5.0  # s1 is outside the 60 s window as of 200
    assert (o1[LABEL], o2[LABEL], cold) == (1.0, 0.0, 0)


def test_a_label_naming_no_prediction_joins_by_event_time() -> None:
    """With no answer to reproduce, a label sees every event stamped by its time, even
    one that reached ingest later (a backfilled history); arrival-time visibility for
    answered labels is proven by the replay tests and the features skew test.
    """
    signals = pd.concat(
        [
            _signals(("s1", 100.0, 1.0)),
            _signals(("late", 150.0, 7.0), arrival_lag=100.0, offsets=[1]),
        ]
    )
    frame, _ = _join(signals, _outcomes(("o1", 230.0, 1.0, None), ("o2", 300.0, 1.0, None)))
    assert _row(frame, "o1")["usage__x_last"] == 7.0  # stamped 150 <= 200, arrived 250
    assert _row(frame, "o2")["usage__x_last"] == 7.0


def test_prediction_id_joins_at_the_prediction_time() -> None:
    """An outcome naming a logged answer gets the features as of that answer."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 500.0, 9.0))
    outcomes = _outcomes(("o1", 900.0, 1.0, "p1"), ("o2", 900.0, 1.0, None))
    frame, _ = _join(signals, outcomes, _anchors(("p1", 150.0)))
    assert (_row(frame, "o1")["usage__x_last"], _row(frame, "o1")[TS]) == (1.0, 150.0)
    assert (_row(frame, "o2")["usage__x_last"], _row(frame, "o2")[TS]) == (9.0, 870.0)


def test_duplicates_count_once() -> None:
    """A Kafka position stored twice, or a non-Kafka event id twice, counts once."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 120.0, 2.0))
    outcomes = _outcomes(("o1", 160.0, 1.0, None))  # at 130: both in the 60 s window
    clean, _ = _join(signals, outcomes)
    doubled, _ = _join(pd.concat([signals, signals, signals.iloc[:1]]), outcomes)
    unkafka = signals.assign(topic="", partition=-1, offset=-1)
    no_offsets, _ = _join(pd.concat([unkafka, unkafka]), outcomes)
    pd.testing.assert_frame_equal(clean, doubled)
    pd.testing.assert_frame_equal(clean, no_offsets)
    assert (_row(clean, "o1")["usage__n"], _row(clean, "o1")["usage__x_sum_60"]) == (2.0, 3.0)


def test_rows_written_before_lineage_arrived_at_their_event_time() -> None:
    """Null arrival time, topic, partition and offset: the event counts from its time."""
    signals = _signals(("s1", 100.0, 1.0), ("s2", 120.0, 2.0)).assign(
        arrival_ts=np.nan, topic=None, partition=np.nan, offset=np.nan
    )
    frame, _ = _join(signals, _outcomes(("o1", 140.0, 1.0, None), ("o2", 160.0, 1.0, None)))
    assert (_row(frame, "o1")["usage__x_last"], _row(frame, "o2")["usage__x_last"]) == (1.0, 2.0)


def test_other_sources_and_schema_versions_are_ignored() -> None:
    """Only signals of the view's source at the source's current version feed features."""
    signals = pd.concat(
        [
            _signals(("s1", 100.0, 1.0)),
            _signals(("old", 110.0, 50.0), version=1, offsets=[1]),
            _signals(("other", 120.0, 70.0), source="elsewhere", offsets=[2]),
        ]
    )
    frame, _ = _join(signals, _outcomes(("o1", 200.0, 1.0, None)))
    assert (_row(frame, "o1")["usage__x_last"], _row(frame, "o1")["usage__n"]) == (1.0, 1.0)


def test_cold_start_outcome_is_dropped_and_counted() -> None:
    """An outcome whose entity had no vector yet at its query time yields no row."""
    signals = _signals(("s1", 500.0, 1.0))
    outcomes = pd.concat(
        [
            _outcomes(("early", 100.0, 1.0, None), ("late", 600.0, 0.0, None)),
            _outcomes(("stranger", 600.0, 1.0, None), entity="h9"),
        ]
    )
    frame, cold = _join(signals, outcomes)
    assert list(frame[OUTCOME_ID]) == ["late"]
    assert cold == 2


def test_features_are_the_vector_serve_held_not_a_recomputation() -> None:
    """Between events the row keeps the vector of the last event, as the online store does."""
    frame, _ = _join(_signals(("s1", 100.0, 1.0)), _outcomes(("o1", 400.0, 1.0, None)))
    row = _row(frame, "o1")  # queries at 370; the online vector was computed at 100
    assert row["usage__x_sum_60"] == 1.0  # not 0.0: the window is anchored at 100
    assert row[TS] == 370.0


def test_missing_values_are_nan_and_categories_stay_strings() -> None:
    """An absent optional field gives NaN; a str field is a fraction or a str category."""
    frame, _ = _join(_signals(("s1", 100.0, 1.0), mode="b"), _outcomes(("o1", 130.0, 1.0, None)))
    row = _row(frame, "o1")
    assert math.isnan(row["usage__y_last"])  # type: ignore[arg-type]
    assert (row["usage__b_share"], row["usage__mode_last"]) == (1.0, "b")
    assert list(frame.columns) == SPEC.columns
    assert frame["usage__mode_last"].dtype == object


def test_rows_equal_the_engine_fed_event_by_event() -> None:
    """Each row is the vector the engine holds after applying, one at a time, the events
    stamped by the label's time (labels naming no prediction join by event time)."""
    rng = np.random.default_rng(3)
    ts = np.sort(rng.uniform(0.0, 2000.0, 40))
    events = _signals(*((f"s{i}", float(t), float(rng.normal())) for i, t in enumerate(ts)))
    events["arrival_ts"] = ts + rng.uniform(0.0, 30.0, len(ts))
    events["arrival_ts"] = events["arrival_ts"].cummax()  # arrivals in Kafka order
    labels = np.sort(rng.uniform(50.0, 2100.0, 15))
    outcomes = _outcomes(*((f"o{i}", float(t), float(i % 2), None) for i, t in enumerate(labels)))
    frame, _ = _join(events, outcomes)

    plan = SPEC.plans["usage"]
    numeric, text, _ = field_columns(
        plan.field_types, [json.loads(f) for f in events["fields_json"]]
    )
    for row in frame.to_dict("records"):
        states = States.empty(plan, 1)
        arrived = np.flatnonzero(ts <= row[TS])
        for i in arrived:  # one event per batch, in Kafka order
            apply(
                plan,
                states,
                EventColumns(
                    entity=np.zeros(1, dtype=np.int64),
                    ts=ts[[i]],
                    seq=np.array([float(i)]),
                    partition=np.zeros(1, dtype=np.int64),
                    offset=np.array([i], dtype=np.int64),
                    numeric={k: v[[i]] for k, v in numeric.items()},
                    text={k: v[[i]] for k, v in text.items()},
                ),
            )
        [online] = vectors(plan, states)
        assert online is not None
        for column in SPEC.feature_columns:
            served = online[column.split("__")[1]]
            expected = math.nan if served is None and column != "usage__mode_last" else served
            assert row[column] == pytest.approx(expected, nan_ok=True), column

"""The served-features join, pure: logged inputs become rows; label rules; what falls through."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.definitions import parse_definitions
from services.retrain.core.dataset import ENTITY, LABEL, OUTCOME_ID, TS, JoinSpec
from services.retrain.core.served_rows import (
    ANCHOR_COLUMNS,
    OUTCOME_COLUMNS,
    ServedCounts,
    clean_outcomes,
    served_rows,
)


def _definitions(objective: str = "binary") -> JoinSpec:
    defs = parse_definitions(
        {
            "sources": [
                {
                    "name": "meter",
                    "entity": "house",
                    "fields": {"x": {"type": "float"}, "y": {"type": "float", "required": False}},
                }
            ],
            "feature_views": [
                {
                    "name": "usage",
                    "source": "meter",
                    "features": [
                        {"name": "x_last", "field": "x", "agg": "last"},
                        {"name": "y_last", "field": "y", "agg": "last"},
                    ],
                }
            ],
            "models": [
                {
                    "name": "m",
                    "features": ["usage.x_last", "usage.y_last"],
                    "lightgbm": {"objective": objective},
                }
            ],
        }
    )
    return JoinSpec.of(defs, "m")


SPEC = _definitions()
COLUMNS = ["usage__x_last", "usage__y_last"]


def _outcomes(*rows: tuple[str, str, float, float, str | None]) -> pd.DataFrame:
    """(event id, entity, ts, label, prediction id) rows, in produced order."""
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def _predictions(
    *rows: tuple[str, str, float, str, dict[str, float | None] | None],
) -> pd.DataFrame:
    """(prediction id, entity, ts, variant, logged features or None for '{}') rows."""
    return pd.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "entity_id": [r[1] for r in rows],
            "ts": [r[2] for r in rows],
            "variant": [r[3] for r in rows],
            "features_json": [json.dumps(r[4] or {}, sort_keys=True) for r in rows],
        }
    )


def _served(x: float, y: float | None) -> dict[str, float | None]:
    return {"usage.x_last": x, "usage.y_last": y}


def test_rows_are_the_logged_inputs_as_of_the_prediction() -> None:
    """A label naming a logged answer trains on the inputs serve logged, at the answer's time."""
    predictions = _predictions(
        ("p1", "h1", 100.0, "champion", _served(1.5, None)),
        ("p2", "h2", 200.0, "challenger", _served(-2.0, 7.25)),
    )
    outcomes = _outcomes(("o1", "h1", 900.0, 1.0, "p1"), ("o2", "h2", 950.0, 0.0, "p2"))

    join = served_rows(SPEC, outcomes, predictions)

    assert list(join.rows.columns) == SPEC.columns
    assert list(join.rows[OUTCOME_ID]) == ["o1", "o2"]
    assert list(join.rows[TS]) == [100.0, 200.0]  # the answers' times, not the labels'
    assert list(join.rows[ENTITY]) == ["h1", "h2"]
    assert list(join.rows[LABEL]) == [1.0, 0.0]
    np.testing.assert_array_equal(join.rows[COLUMNS].to_numpy(), [[1.5, np.nan], [-2.0, 7.25]])
    assert (join.rows[COLUMNS].dtypes == "float64").all()
    assert join.pending.empty and join.anchors.empty
    assert join.counts == ServedCounts(outcomes=2, served=2)


def test_latest_correction_wins_by_event_time_then_produced_order() -> None:
    """Of several labels for one answer the latest wins; a tie goes to the later produced."""
    predictions = _predictions(
        ("p1", "h1", 100.0, "champion", _served(1.0, 1.0)),
        ("p2", "h2", 100.0, "champion", _served(2.0, 2.0)),
    )
    outcomes = _outcomes(
        ("late", "h1", 500.0, 1.0, "p1"),
        ("early", "h1", 300.0, 0.0, "p1"),  # produced after `late`, but an older label
        ("tie-a", "h2", 400.0, 0.0, "p2"),
        ("tie-b", "h2", 400.0, 1.0, "p2"),  # same event time: produced later wins
    )

    join = served_rows(SPEC, outcomes, predictions)

    assert dict(zip(join.rows[OUTCOME_ID], join.rows[LABEL], strict=True)) == {
        "late": 1.0,
        "tie-b": 1.0,
    }
    assert join.counts.corrected == 2
    assert join.counts.served == 2


def test_duplicates_count_once() -> None:
    """The same outcome delivered twice (same event id) is one label."""
    predictions = _predictions(("p1", "h1", 100.0, "champion", _served(1.0, None)))
    once = _outcomes(("o1", "h1", 200.0, 1.0, "p1"), ("o2", "h1", 300.0, 0.0, None))
    twice = pd.concat([once, once, once.iloc[:1]], ignore_index=True)

    a, b = served_rows(SPEC, once, predictions), served_rows(SPEC, twice, predictions)

    pd.testing.assert_frame_equal(a.rows, b.rows)
    pd.testing.assert_frame_equal(a.pending, b.pending)
    assert b.counts.duplicates == 3
    assert (b.counts.outcomes, b.counts.served, b.counts.no_prediction) == (2, 1, 1)


def test_unknown_prediction_ids_are_dropped_and_unnamed_labels_go_to_the_signal_join() -> None:
    """An id the log lacks (for that entity) is dropped and counted, never joined at
    label time; an outcome naming no answer goes to the signal join."""
    predictions = _predictions(("p1", "h1", 100.0, "champion", _served(1.0, None)))
    outcomes = _outcomes(
        ("named", "h1", 200.0, 1.0, "p1"),
        ("unknown", "h1", 210.0, 1.0, "p-not-logged"),
        ("none", "h1", 220.0, 0.0, None),
        ("other-entity", "h2", 230.0, 1.0, "p1"),  # p1 answered h1, not h2
    )

    join = served_rows(SPEC, outcomes, predictions)

    assert list(join.rows[OUTCOME_ID]) == ["named"]
    assert list(join.pending["event_id"]) == ["none"]
    assert list(join.pending.columns) == OUTCOME_COLUMNS
    assert list(join.pending["prediction_id"]) == [""]
    assert list(join.unknown["event_id"]) == ["unknown", "other-entity"]
    assert list(join.unknown.columns) == OUTCOME_COLUMNS
    assert join.anchors.empty
    assert (join.counts.unknown_prediction, join.counts.no_prediction) == (2, 1)
    assert join.counts.to_signal_join == 1


@pytest.mark.parametrize(
    ("variant", "features"),
    [
        ("fallback", None),  # a fallback answer logs no inputs
        ("champion", None),  # a log from before serve recorded inputs
        ("champion", {"usage.x_last": 1.0}),  # the model's inputs changed since
    ],
)
def test_answers_logged_without_the_inputs_anchor_the_signal_join(
    variant: str, features: dict[str, float | None] | None
) -> None:
    """A logged answer without the model's inputs is joined over signals at its own time."""
    predictions = _predictions(("p1", "h1", 100.0, variant, features))
    outcomes = _outcomes(("o1", "h1", 900.0, 1.0, "p1"))

    join = served_rows(SPEC, outcomes, predictions)

    assert join.rows.empty and list(join.rows.columns) == SPEC.columns
    assert list(join.pending["event_id"]) == ["o1"]
    assert list(join.anchors.columns) == ANCHOR_COLUMNS
    assert join.anchors.to_dict("records") == [{"event_id": "p1", "entity_id": "h1", "ts": 100.0}]
    assert join.counts.anchored == 1


def test_labels_outside_the_objective_are_dropped_and_counted() -> None:
    """0.7 is no label of a binary model (and corrects nothing); a regression keeps it."""
    predictions = _predictions(("p1", "h1", 100.0, "champion", _served(1.0, None)))
    outcomes = _outcomes(("good", "h1", 200.0, 1.0, "p1"), ("bad", "h1", 300.0, 0.7, "p1"))

    binary = served_rows(SPEC, outcomes, predictions)
    regression = served_rows(_definitions("regression"), outcomes, predictions)

    assert list(binary.rows[LABEL]) == [1.0]
    assert (binary.counts.invalid_label, binary.counts.corrected) == (1, 0)
    assert list(regression.rows[LABEL]) == [0.7]
    assert (regression.counts.invalid_label, regression.counts.corrected) == (0, 1)


def test_answers_before_the_window_are_dropped_not_joined_at_label_time() -> None:
    """With `since`, a label of an answer made before it is outside the window."""
    predictions = _predictions(
        ("old", "h1", 100.0, "champion", _served(1.0, None)),
        ("old-fallback", "h1", 110.0, "fallback", None),
        ("new", "h1", 1000.0, "champion", _served(2.0, None)),
    )
    outcomes = _outcomes(
        ("o-old", "h1", 1100.0, 1.0, "old"),
        ("o-old-fallback", "h1", 1150.0, 1.0, "old-fallback"),
        ("o-new", "h1", 1200.0, 0.0, "new"),
    )

    join = served_rows(SPEC, outcomes, predictions, since=500.0)

    assert list(join.rows[OUTCOME_ID]) == ["o-new"]
    assert join.pending.empty
    assert join.counts.before_window == 2


def test_no_outcomes_gives_empty_frames_with_the_columns() -> None:
    """Nothing labelled: empty rows with the training columns, nothing pending."""
    join = served_rows(SPEC, _outcomes(), _predictions())
    assert join.rows.empty and list(join.rows.columns) == SPEC.columns
    assert join.pending.empty and join.counts == ServedCounts()


def test_clean_outcomes_keeps_produced_order() -> None:
    """Cleaning keeps the surviving outcomes in the order they were produced."""
    outcomes = _outcomes(
        ("a", "h1", 5.0, 1.0, None),
        ("b", "h1", 1.0, 0.0, "p1"),
        ("c", "h1", 3.0, 1.0, None),
        ("d", "h1", 2.0, 1.0, "p1"),
    )
    clean, counts = clean_outcomes(outcomes, binary=True)
    assert list(clean["event_id"]) == ["a", "c", "d"]
    assert counts == {"outcomes": 4, "duplicates": 0, "invalid_label": 0, "corrected": 1}


# A property: any order of the log, any interleaving of the outcome stream that keeps
# each answer's labels in their produced order, and any redelivery gives the same frame.

_LABELS = st.sampled_from([0.0, 1.0, 1.0, 0.5])
_OUTCOME = st.tuples(
    st.integers(0, 5),  # which prediction it names: 0-3 logged, 4 unknown, 5 none
    st.integers(0, 4),  # event time, small so corrections tie
    _LABELS,
)


@settings(max_examples=50, deadline=None)
@given(
    outcomes=st.lists(_OUTCOME, min_size=0, max_size=25),
    prediction_order=st.permutations(range(4)),
    interleave=st.randoms(use_true_random=False),
    redelivered=st.lists(st.integers(0, 24), max_size=8),
)
def test_any_order_and_redelivery_gives_the_same_frame(
    outcomes: list[tuple[int, int, float]],
    prediction_order: list[int],
    interleave,  # type: ignore[no-untyped-def]
    redelivered: list[int],
) -> None:
    """Permuted log, re-interleaved outcomes and duplicates: the same rows and pending set."""
    variants = ["champion", "challenger", "fallback", "champion"]
    log = [
        (f"p{k}", f"h{k % 2}", 100.0 + k, variants[k], None if k == 2 else _served(k, -k))
        for k in range(4)
    ]
    rows = [
        (f"o{i}", f"h{k % 2}", 1000.0 + t, label, f"p{k}" if k < 4 else ("px" if k == 4 else None))
        for i, (k, t, label) in enumerate(outcomes)
    ]
    base = served_rows(SPEC, _outcomes(*rows), _predictions(*log))

    # Re-interleave: shuffle the slots, then give each answer's labels its slots in order.
    def group(row: tuple[str, str, float, float, str | None]) -> str:
        return row[4] or row[0]  # unnamed outcomes are groups of one

    slots = [group(r) for r in rows]
    interleave.shuffle(slots)
    queues: dict[str, list[tuple[str, str, float, float, str | None]]] = {}
    for r in rows:
        queues.setdefault(group(r), []).append(r)
    shuffled = [queues[g].pop(0) for g in slots]
    again = shuffled + [rows[i] for i in redelivered if i < len(rows)]
    other = served_rows(
        SPEC, _outcomes(*again), _predictions(*[log[k] for k in prediction_order] * 2)
    )

    pd.testing.assert_frame_equal(base.rows, other.rows)
    key = ["event_id"]
    pd.testing.assert_frame_equal(
        base.pending.sort_values(key).reset_index(drop=True),
        other.pending.sort_values(key).reset_index(drop=True),
    )
    assert base.counts.as_dict() | {"duplicates": 0} == other.counts.as_dict() | {"duplicates": 0}

    # And against a plain oracle: per named answer, the valid label latest by (time, order).
    latest: dict[str, tuple[float, int, str, float]] = {}
    for i, (eid, _, ts, label, pid) in enumerate(rows):
        if pid and label in (0.0, 1.0) and (pid not in latest or (ts, i) > latest[pid][:2]):
            latest[pid] = (ts, i, eid, label)
    expected = {
        v[2]: v[3] for pid, v in latest.items() if pid in {"p0", "p1", "p3"}
    }  # logged with inputs (p2 is a fallback, px unknown)
    assert dict(zip(base.rows[OUTCOME_ID], base.rows[LABEL], strict=True)) == expected
    for k in (0, 1, 3):
        mine = base.rows[base.rows[OUTCOME_ID].isin([latest.get(f"p{k}", (0, 0, "", 0))[2]])]
        for row in mine.itertuples(index=False):
            assert (row.usage__x_last, row.usage__y_last) == (float(k), float(-k))
            assert row.ts == 100.0 + k

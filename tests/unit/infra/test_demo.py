"""The demo's pure parts: rolling accuracy, the summary, when the loop has closed, who
reports when; and the synthetic source's scheduled reports."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from rich.console import Console

from infra.demo.accuracy import Judged, RollingAccuracy
from infra.demo.population import Population
from infra.demo.summary import summarise
from infra.demo.timeline import loop_closed
from infra.demo.view import accuracy_table
from libs.common.definitions import FieldSpec, FieldType, SourceDefinition
from libs.common.synthetic import SyntheticConfig, SyntheticSource


def _judged(at: float, version: str, correct: bool, variant: str = "champion") -> Judged:
    return Judged(at=at, version=version, variant=variant, correct=correct)


def test_rolling_accuracy_keeps_the_newest_labels_per_version_and_variant() -> None:
    """Each (version, variant) has its own window of the newest `size` labels."""
    rolling = RollingAccuracy(size=4)
    for i in range(6):
        rolling.add(_judged(i, "1", i >= 2))  # the two wrong ones fall out of the window
    rolling.add(_judged(10, "2", False))
    rolling.add(_judged(11, "2", True, variant="challenger"))
    rows = rolling.rows()
    assert [(r.version, r.variant, r.labels, r.accuracy) for r in rows] == [
        ("1", "champion", 6, 1.0),
        ("2", "champion", 1, 0.0),
        ("2", "challenger", 1, 1.0),
    ]
    assert (rows[0].first_at, rows[0].last_at) == (0, 5)


def test_accuracy_table_shows_one_line_per_version() -> None:
    """The live view's table names each version with its labels and rolling accuracy."""
    rolling = RollingAccuracy(size=10)
    for i in range(10):
        rolling.add(_judged(i, "1", i % 5 != 0))
    rolling.add(_judged(20, "3", True))
    console = Console(record=True, width=120)
    console.print(accuracy_table(rolling.rows(), size=10))
    text = console.export_text()
    assert "accuracy (last 10)" in text
    assert "v1" in text and "0.800" in text and "10" in text
    assert "v3" in text and "1.000" in text and "20s" in text


def test_summary_splits_before_right_after_and_after_the_new_version() -> None:
    """Before: the last labels before the drift; right after: the old version after it;
    after: the last labels of versions new since the drift. Fallback answers are left out."""
    judged = [_judged(t, "1", True) for t in range(10)]
    judged += [_judged(9.5, "1", False, variant="fallback")]
    judged += [_judged(10 + t, "1", t == 0) for t in range(4)]  # drift at 10: mostly wrong
    judged += [_judged(14 + t, "2", t > 0) for t in range(5)]  # v2 from 14
    s = summarise(judged, drift_at=10.0, size=4)
    assert (s.before, s.before_n) == (1.0, 4)
    assert (s.right_after, s.right_after_n) == (0.25, 4)
    assert (s.after, s.after_n) == (1.0, 4)
    assert (s.new_version, s.new_version_at) == ("2", 14)


@pytest.mark.parametrize(
    ("drift_at", "judged", "expected_after"),
    [
        (None, [_judged(0, "1", True)], None),  # no drift: only "before"
        (5.0, [_judged(0, "1", True), _judged(6, "1", False)], None),  # no new version
    ],
)
def test_summary_leaves_phases_that_never_came_empty(
    drift_at: float | None, judged: list[Judged], expected_after: float | None
) -> None:
    """A phase the run did not reach has no accuracy rather than a made-up one."""
    s = summarise(judged, drift_at=drift_at)
    assert s.before == 1.0
    assert s.after == expected_after and s.new_version is None


@pytest.mark.parametrize(
    ("changes", "closed"),
    [
        ({}, True),
        ({"drift_at": None}, False),
        ({"events_at": []}, False),
        ({"registered_at": [50.0]}, False),  # the newest drift event is not answered yet
        ({"post_drift_labels": 1000}, False),  # the refit's turn has not come
        ({"serving_new_labels": 199}, False),  # the new version is not judged enough
    ],
)
def test_loop_closed_needs_every_step(changes: dict[str, object], closed: bool) -> None:
    """The demo ends only after drift, answered events, the refit's turn and a judged
    new version."""
    args: dict[str, object] = {
        "drift_at": 10.0,
        "events_at": [40.0, 90.0],
        "registered_at": [50.0, 100.0],
        "post_drift_labels": 1400,
        "refit_labels": 1200,
        "serving_new_labels": 200,
    }
    assert loop_closed(**{**args, **changes}) is closed  # type: ignore[arg-type]


def test_population_seeds_spread_ages_and_replaces_entities_after_their_life() -> None:
    """Ages start spread over a life; every entity reports about once per step; one that
    reported `life` times retires and a new one takes its place."""
    pop = Population(size=10, life=4, step_s=30.0, prefix="t", rng=random.Random(1))
    past = pop.seed(now=10_000.0)
    assert [s.reports for s in pop.schedules] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert len(past) == 14 and all(at < 10_000.0 for at, _ in past)
    assert [at for at, _ in past] == sorted(at for at, _ in past)
    pop.resume(10_000.0)
    reports: list[str] = []
    retired: list[str] = []
    born: list[str] = []
    for tick in range(1, 121):  # one minute in half-second ticks
        due = pop.due(10_000.0 + tick * 0.5)
        reports += due.reports
        retired += due.retired
        born += due.born
    assert len(pop.schedules) == 10
    assert 15 <= len(reports) <= 30  # about two reports each (intervals 15-45 s)
    assert len(retired) == len(born) >= 2  # the oldest (3 reports) retire at their next
    assert not set(born) & {f"t-{i}" for i in range(1, 11)}


def _source() -> SourceDefinition:
    return SourceDefinition(
        name="sensors",
        version=1,
        entity="device",
        fields={
            "temperature": FieldSpec(type=FieldType.float, min=-50, max=150),
            "status": FieldSpec(type=FieldType.str, allowed=["ok", "warn", "error"]),
        },
    )


def test_synthetic_reports_follow_the_entity_and_carry_the_configured_extras() -> None:
    """A scheduled report moves the entity one step and is its current signal; with every
    fraction at 1 each report brings a malformed record, a late copy and a duplicate."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    src = SyntheticSource(
        _source(),
        SyntheticConfig(entities=0, bad_fraction=1.0, late_fraction=1.0, duplicate_fraction=1.0),
    )
    src.add_entity("x-1")
    kinds = [r.kind for r in src.report("x-1", at)]
    assert kinds == ["ok", "bad", "late", "duplicate"]
    clean = SyntheticSource(_source(), SyntheticConfig(entities=0))
    clean.add_entity("x-1")
    (ok,) = clean.report("x-1", at)
    assert isinstance(ok.payload, dict) and ok.payload["entity_id"] == "x-1"
    # The label is the truth's Bayes decision; the drift flips it.
    before = clean.decision("x-1")
    assert before == (1.0 if clean.probability("x-1") >= 0.5 else 0.0)
    clean.drifted = True
    assert clean.decision("x-1") != before or clean.probability("x-1") == 0.5
    clean.remove_entity("x-1")
    with pytest.raises(KeyError):
        clean.decision("x-1")


def test_same_seed_same_truth_as_the_bootstrap() -> None:
    """Entities added later do not change the truth's weights: a demo source with the
    bootstrap's seed labels like the bootstrap's source."""
    boot = SyntheticSource(_source(), SyntheticConfig(entities=40, seed=7))
    demo = SyntheticSource(_source(), SyntheticConfig(entities=0, seed=7))
    assert demo._weights == boot._weights

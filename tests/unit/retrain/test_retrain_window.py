"""The data window of a retrain: which rows each policy keeps, their weights, its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from libs.common.definitions import TrainingWindow, parse_definitions
from libs.common.errors import DefinitionsError
from libs.common.offline import OUTCOMES, OfflineStore
from services.retrain.core.dataset import LABEL, TS
from services.retrain.core.window import decay_weights, select_window
from services.retrain.errors import NoTrainingData
from services.retrain.train import real_label_count

REPO = Path(__file__).resolve().parents[3]


def _frame(times: list[float]) -> pd.DataFrame:
    """Rows stamped `times`, in that order, with a label telling them apart."""
    return pd.DataFrame(
        {TS: times, LABEL: [float(i % 2) for i in range(len(times))], "i": range(len(times))}
    )


# Ten rows, one per 100 s, deliberately out of time order.
TIMES = [500.0, 100.0, 900.0, 300.0, 0.0, 700.0, 200.0, 800.0, 400.0, 600.0]


@pytest.mark.parametrize(
    ("policy", "since", "kept_times", "description"),
    [
        # since_change: the change point bounds the data when there is one ...
        (
            TrainingWindow(),
            450.0,
            [500, 900, 700, 800, 600],
            "since_change: as of 1970-01-01T00:07:30Z (5 of 10 rows)",
        ),
        # ... else it is all history.
        (
            TrainingWindow(),
            None,
            TIMES,
            "since_change: no change point, all history (10 of 10 rows)",
        ),
        # all: a change point is ignored, and the description says so.
        (
            TrainingWindow(window="all"),
            450.0,
            TIMES,
            "all: all history (10 of 10 rows); change point 1970-01-01T00:07:30Z ignored",
        ),
        (TrainingWindow(window="all"), None, TIMES, "all: all history (10 of 10 rows)"),
        # last_labels: the newest N, in the frame's order ...
        (
            TrainingWindow(window="last_labels", last_labels=3),
            None,
            [900, 700, 800],
            "last_labels: newest 3 (3 of 10 rows)",
        ),
        # ... after the change point when there is one (fewer than N there: all of them).
        (
            TrainingWindow(window="last_labels", last_labels=3),
            750.0,
            [900, 800],
            "last_labels: newest 3 as of 1970-01-01T00:12:30Z (2 of 10 rows)",
        ),
        (
            TrainingWindow(window="last_labels", last_labels=20),
            None,
            TIMES,
            "last_labels: newest 20 (10 of 10 rows)",
        ),
        # decay keeps every row (after the change point when there is one).
        (
            TrainingWindow(window="decay", half_life_s=100.0),
            650.0,
            [900, 700, 800],
            "decay: half-life 100s from the newest row as of 1970-01-01T00:10:50Z "
            "(3 of 10 rows, effective 2)",
        ),
    ],
)
def test_window_policies(
    policy: TrainingWindow, since: float | None, kept_times: list[float], description: str
) -> None:
    """Each policy keeps the rows its definition promises and says which."""
    window = select_window(_frame(TIMES), policy, since=since)
    assert list(window.frame[TS]) == [float(t) for t in kept_times]
    assert list(window.frame.index) == list(range(len(kept_times)))
    assert window.description == description
    assert (window.weights is not None) == (policy.window == "decay")


def test_decay_weights_halve_every_half_life_back_from_the_newest_row() -> None:
    """The newest row weighs 1, one half-life older 0.5, two 0.25, whatever the order."""
    window = select_window(
        _frame([800.0, 1000.0, 900.0]), TrainingWindow(window="decay", half_life_s=100.0)
    )
    assert window.weights is not None
    np.testing.assert_allclose(window.weights, [0.25, 1.0, 0.5])
    # Relative to the newest row, not the clock: the same rows weigh the same later.
    np.testing.assert_allclose(decay_weights(np.array([5.0, 5.0]), 1.0), [1.0, 1.0])
    assert decay_weights(np.array([]), 1.0).size == 0


@pytest.mark.parametrize(
    "policy",
    [
        TrainingWindow(),
        TrainingWindow(window="last_labels", last_labels=5),
        TrainingWindow(window="decay", half_life_s=60.0),
    ],
)
def test_a_window_after_all_the_data_is_no_training_data(policy: TrainingWindow) -> None:
    """A change point after the newest row leaves nothing to train on: a clear refusal."""
    with pytest.raises(NoTrainingData, match=r"none of the 10 labelled rows is as of .* or later"):
        select_window(_frame(TIMES), policy, since=10_000.0)


@pytest.mark.parametrize(
    ("training", "match"),
    [
        ({"window": "last_labels"}, "'last_labels' needs 'last_labels'"),
        ({"window": "decay"}, "'decay' needs 'half_life_s'"),
        ({"window": "all", "last_labels": 10}, "last_labels applies only to window 'last_labels'"),
        ({"half_life_s": 60}, "half_life_s applies only to window 'decay'"),
        ({"window": "decay", "half_life_s": 0}, "half_life_s"),
        ({"window": "last_labels", "last_labels": 1}, "last_labels"),
        ({"window": "newest"}, "models.0.training.window"),
    ],
)
def test_invalid_windows_name_the_problem(training: dict[str, Any], match: str) -> None:
    """A window policy missing its parameter, or given another's, fails at start."""
    data = yaml.safe_load((REPO / "signalops.yaml").read_text())
    data["models"][0]["training"] = training
    with pytest.raises(DefinitionsError, match=match):
        parse_definitions(data, origin="test.yaml")


def test_the_default_window_is_since_change() -> None:
    """Definitions without a `training` section train since the change point."""
    data = yaml.safe_load((REPO / "signalops.yaml").read_text())
    data["models"][0].pop("training", None)
    model = parse_definitions(data, origin="test.yaml").models[0]
    assert model.training == TrainingWindow(window="since_change")


def _outcome(event_id: str, model: str) -> dict[str, object]:
    return {
        "event_id": event_id,
        "model": model,
        "entity_id": "e",
        "ts": 1.0,
        "label": 1.0,
        "prediction_id": None,
    }


def test_real_label_count_counts_distinct_outcomes_of_one_model(tmp_path: Path) -> None:
    """Redelivered outcomes count once, other models' outcomes not at all."""
    store = OfflineStore(tmp_path / "real")
    store.append(OUTCOMES, [_outcome(f"o{i}", "m") for i in range(5)], name="a")
    store.append(OUTCOMES, [_outcome("o0", "m"), _outcome("x", "other")], name="b")

    assert real_label_count(store, "m") == 5
    assert real_label_count(store, "other") == 1
    assert real_label_count(store, "absent") == 0
    assert real_label_count(OfflineStore(tmp_path / "empty"), "m") == 0
    # Stops once it has seen enough: a bound, not an exact count.
    assert 3 <= real_label_count(store, "m", at_least=3) <= 5

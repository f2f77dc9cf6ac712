"""LightGBM training on a synthetic frame: learnable truth, time split, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from libs.common.definitions import load_definitions
from libs.common.offline import OfflineStore
from services.retrain.adapters.training_frame import build_training_frame
from services.retrain.bootstrap import write_synthetic_history
from services.retrain.core.dataset import LABEL, TS, JoinSpec
from services.retrain.core.training import time_split, train_booster
from services.retrain.errors import NoTrainingData

REPO = Path(__file__).resolve().parents[3]


def _synthetic_frame(tmp_path: Path, definitions_file: str, model: str) -> pd.DataFrame:
    """A training frame from SyntheticSource history, joined in process (no Ray)."""
    definitions = load_definitions(REPO / definitions_file)
    store = OfflineStore(tmp_path)
    write_synthetic_history(store, definitions, model, entities=30, steps=80, step_s=30.0, seed=3)
    return build_training_frame(store, JoinSpec.of(definitions, model))


@pytest.mark.parametrize(
    ("definitions_file", "model"),
    [("signalops.yaml", "default"), ("examples/payments.yaml", "fraud")],
)
def test_synthetic_truth_is_learned(tmp_path: Path, definitions_file: str, model: str) -> None:
    """Training on synthetic history gives a holdout AUC well above chance."""
    definitions = load_definitions(REPO / definitions_file)
    frame = _synthetic_frame(tmp_path, definitions_file, model)
    trained = train_booster(frame, definitions.model(model), holdout_fraction=0.2)
    m = trained.metrics
    assert m.rows == len(frame) == 30 * 80
    assert (m.train_rows, m.holdout_rows) == (1920, 480)
    assert m.auc > 0.75, m
    assert 0.0 < m.log_loss < 0.69  # better than a coin
    assert trained.booster.feature_name() == trained.columns


def test_time_split_holds_out_the_newest_rows() -> None:
    """The holdout is the latest 20% by as-of time, whatever the frame's order."""
    frame = pd.DataFrame(
        {TS: [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 10.0], LABEL: [0.0, 1.0] * 5}
    )
    train, holdout = time_split(frame, 0.2)
    assert list(holdout[TS]) == [9.0, 10.0]
    assert train[TS].max() < holdout[TS].min()


def test_one_class_is_refused() -> None:
    """A frame whose training labels are all one class is NoTrainingData, not a crash."""
    definitions = load_definitions(REPO / "signalops.yaml")
    model = definitions.model("default")
    cols = {c: [1.0] * 10 for c in JoinSpec.of(definitions, "default").feature_columns}
    frame = pd.DataFrame({**cols, LABEL: [0.0] * 10, TS: list(range(10))})
    with pytest.raises(NoTrainingData, match="a classifier needs both classes"):
        train_booster(frame, model)

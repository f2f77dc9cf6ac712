"""Training at any size and the data the trainer learns from, against real Ray and MLflow.

The distributed path (Ray Train's LightGBM trainer) is forced with a threshold of 0
rows; the local path is plain LightGBM in the test process.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from libs.common.definitions import ModelDefinition, load_definitions
from libs.common.features import model_columns
from libs.common.offline import OUTCOMES, OfflineStore
from libs.common.registry import MlflowRegistry
from libs.common.schemas import utcnow
from services.retrain.adapters.ray_train import RayTrainFit
from services.retrain.bootstrap import (
    BOOTSTRAP_ENTITY_PREFIX,
    bootstrap_models,
    bootstrap_root,
    write_synthetic_history,
)
from services.retrain.core.dataset import LABEL, TS
from services.retrain.core.training import fit_by_size, local_fit, train_booster
from services.retrain.errors import NoTrainingData
from services.retrain.train import train_model

REPO = Path(__file__).resolve().parents[3]


def _learnable_frame(model: ModelDefinition, rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows whose label is a noisy logistic function of two of the model's features."""
    rng = np.random.default_rng(seed)
    columns = model_columns(model)
    x = rng.normal(size=(rows, len(columns)))
    p = 1.0 / (1.0 + np.exp(-(2.0 * x[:, 0] - 1.5 * x[:, 1])))
    return pd.DataFrame(x, columns=columns).assign(
        **{LABEL: (rng.random(rows) < p).astype("float64"), TS: np.arange(rows, dtype="float64")}
    )


def test_distributed_fit_matches_the_local_fit(ray_cluster: str) -> None:
    """Ray Train's LightGBM, forced by a threshold of 0 rows, returns a booster over the
    model's columns whose holdout AUC is within 0.05 of plain LightGBM's on the same rows."""
    model = load_definitions(REPO / "signalops.yaml").model("default")
    frame = _learnable_frame(model, 4000)
    # Weights go through the distributed path too.
    weights = np.linspace(0.5, 1.0, len(frame))

    local = train_booster(frame, model, weights=weights, fit=local_fit)
    distributed = train_booster(
        frame,
        model,
        weights=weights,
        fit=fit_by_size(0, RayTrainFit(workers=2, cpus_per_worker=0.5)),
    )

    assert distributed.booster.feature_name() == model_columns(model)
    assert distributed.booster.current_iteration() == model.num_boost_round
    assert local.metrics.auc > 0.8, local.metrics
    assert abs(distributed.metrics.auc - local.metrics.auc) < 0.05, (
        distributed.metrics,
        local.metrics,
    )
    # The same split and holdout: only the fit differs.
    assert distributed.metrics.holdout_rows == local.metrics.holdout_rows == 800
    pd.testing.assert_frame_equal(distributed.holdout, local.holdout)


def _labels(store: OfflineStore) -> list[str]:
    return [
        entity
        for path in store.files(OUTCOMES)
        for entity in pq.read_table(path, columns=["entity_id"]).column(0).to_pylist()
    ]


def test_bootstrap_history_only_while_real_labels_are_few(  # type: ignore[no-untyped-def]
    retrain_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthetic history (reserved entity ids) joins a development retrain while the
    model has fewer than `promotion.min_rows` real labels, never after, never with a
    change point; the version records its data window; the large-set path is a setting."""
    settings = retrain_settings(train_with_bootstrap_history=None)
    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    name = model.name
    min_rows = model.promotion.min_rows
    registry = MlflowRegistry.from_settings(settings)
    bootstrap_models(settings, definitions, registry=registry)
    bootstrap_store = OfflineStore(bootstrap_root(settings))
    assert all(e.startswith(BOOTSTRAP_ENTITY_PREFIX) for e in _labels(bootstrap_store))
    bootstrap_rows = 30 * 80

    # 1. A few real labels (10 entities x 15 reports = 150 < min_rows): the bootstrap
    #    history still joins.
    real = OfflineStore(settings.offline_dir)
    end = utcnow() + timedelta(hours=1)
    write_synthetic_history(
        real,
        definitions,
        name,
        entities=10,
        steps=15,
        step_s=20.0,
        seed=21,
        end=end,
        file_prefix="real-1",
    )
    assert len(_labels(real)) == 150 < min_rows
    assert not any(e.startswith(BOOTSTRAP_ENTITY_PREFIX) for e in _labels(real))
    few = train_model(settings, definitions, name, "few labels", registry=registry)
    assert few.metrics["rows"] == bootstrap_rows + 150

    # 2. With a change point the run never includes it: its window holds the 150 real
    #    labels only, too few to pass min_rows, so the run waits for labels (skipped).
    since = (end - timedelta(hours=2)).timestamp()
    with pytest.raises(NoTrainingData, match=r"150 labelled rows in the window.*min_rows 200"):
        train_model(settings, definitions, name, "window", registry=registry, since=since)

    # 3. Enough real labels: never again, and (threshold 0) the distributed path trains.
    write_synthetic_history(
        real,
        definitions,
        name,
        entities=20,
        steps=15,
        step_s=20.0,
        seed=22,
        end=end,
        file_prefix="real-2",
    )
    assert len(_labels(real)) == 450 >= min_rows
    calls: list[int] = []
    original = RayTrainFit.__call__

    def counting(self: RayTrainFit, train: pd.DataFrame, *args: Any) -> Any:
        calls.append(len(train))
        return original(self, train, *args)

    monkeypatch.setattr(RayTrainFit, "__call__", counting)
    large = settings.model_copy(update={"distributed_training_rows": 0})
    enough = train_model(large, definitions, name, "enough labels", registry=registry)
    assert enough.metrics["rows"] == 450
    assert calls == [enough.metrics["train_rows"]]
    booster = registry.load_booster(name, enough.version)
    assert booster.feature_name() == model_columns(model)
    windowed = train_model(settings, definitions, name, "window", registry=registry, since=since)
    assert windowed.metrics["rows"] == 450
    tags = {v.version: v.tags for v in registry.list_versions(name)}
    assert tags[enough.version]["data_window"] == (
        "since_change: no change point, all history (450 of 450 rows)"
    )
    assert tags[windowed.version]["data_window"].startswith("since_change: as of ")

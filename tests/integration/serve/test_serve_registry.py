"""The MLflow registry adapter against a real MLflow store (SQLite backend)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from services.serve.adapters.registry import MlflowModelSource

from libs.common.definitions import load_definitions
from services.serve.core.predict import Predictor


def test_champion_loads_as_the_registered_booster(
    register_model, serve_definitions, train, mlflow_uri: str, tmp_path: Path
) -> None:
    """The champion alias resolves to its version, whose booster predicts like the original."""
    suffix = uuid.uuid4().hex[:8]
    model = load_definitions(serve_definitions(tmp_path, suffix)).models[0]
    source = MlflowModelSource(mlflow_uri)
    assert source.version_of(model.name, "champion") is None  # not registered yet

    version = register_model(model, 3)
    loaded = source.load_champion(model.name)
    assert loaded is not None and loaded[0] == version
    rows = np.random.default_rng(0).normal(size=(20, len(model.features)))
    expected = Predictor.from_booster(train(model, 3)).predict(rows)
    assert np.allclose(Predictor.for_model(loaded[1], model).predict(rows), expected)
    assert source.version_of(model.name, "challenger") is None


def test_missing_store_is_no_model_and_stays_missing(tmp_path: Path) -> None:
    """A SQLite store that does not exist yet means 'no model'; serve never creates it."""
    db = tmp_path / "absent.db"
    assert MlflowModelSource(f"sqlite:///{db}").version_of("default", "champion") is None
    assert not db.exists()

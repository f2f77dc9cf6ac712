"""The shared registry client against a real MLflow store (SQLite backend)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from libs.common.definitions import load_definitions
from libs.common.registry import MODEL_FILE, MlflowRegistry, ModelIntegrityError
from services.serve.core.predict import Predictor


def test_champion_loads_as_the_registered_booster(
    register_model, serve_definitions, train, mlflow_uri: str, tmp_path: Path
) -> None:
    """The champion alias resolves to its version, whose booster predicts like the original."""
    suffix = uuid.uuid4().hex[:8]
    model = load_definitions(serve_definitions(tmp_path, suffix)).models[0]
    registry = MlflowRegistry(mlflow_uri, str(tmp_path / "artifacts"))
    assert registry.version_of(model.name, "champion") is None  # not registered yet

    version = register_model(model, 3)
    assert registry.version_of(model.name, "champion") == version
    loaded = registry.load_booster(model.name, version)
    rows = np.random.default_rng(0).normal(size=(20, len(model.features)))
    expected = Predictor.from_booster(train(model, 3)).predict(rows)
    assert np.allclose(Predictor.for_model(loaded, model).predict(rows), expected)
    assert registry.version_of(model.name, "challenger") is None


def test_tampered_model_file_is_refused(
    register_model, serve_definitions, mlflow_uri: str, tmp_path: Path
) -> None:
    """A model.lgb that no longer matches the sha256 recorded at registration is not loaded."""
    model = load_definitions(serve_definitions(tmp_path, uuid.uuid4().hex[:8])).models[0]
    version = register_model(model, 4)
    registry = MlflowRegistry(mlflow_uri, str(tmp_path / "artifacts"))
    location = registry._client.get_model_version_download_uri(model.name, version)
    stored = Path(location.removeprefix("file://")) / MODEL_FILE
    assert stored.is_file()
    stored.write_text(stored.read_text().replace("tree", "tree ", 1))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        registry.load_booster(model.name, version)


def test_version_without_checksum_is_refused(
    serve_definitions, train, mlflow_uri: str, tmp_path: Path
) -> None:
    """A version registered outside signalops (e.g. an MLmodel with a pickle flavour) has no
    recorded sha256 and is never loaded.
    """
    import mlflow

    model = load_definitions(serve_definitions(tmp_path, uuid.uuid4().hex[:8])).models[0]
    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.create_experiment(
        f"foreign-{uuid.uuid4().hex[:8]}", artifact_location=str(tmp_path / "foreign")
    )
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.lightgbm.log_model(
            train(model, 1), name="model", registered_model_name=model.name
        )
    registry = MlflowRegistry(mlflow_uri, str(tmp_path / "artifacts"))
    with pytest.raises(ModelIntegrityError, match="model_sha256"):
        registry.load_booster(model.name, str(info.registered_model_version))


def test_missing_store_is_no_model_and_stays_missing(tmp_path: Path) -> None:
    """A SQLite store that does not exist yet means 'no model'; a reader never creates it."""
    db = tmp_path / "absent.db"
    registry = MlflowRegistry(f"sqlite:///{db}", str(tmp_path / "artifacts"))
    assert registry.version_of("default", "champion") is None
    assert registry.version_for_request("default", "r1") is None
    assert not db.exists()

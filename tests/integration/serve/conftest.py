"""Serve integration fixtures: models registered in the session's MLflow under unique names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import yaml

from libs.common.definitions import ModelDefinition, load_definitions
from libs.common.features import model_columns

REPO = Path(__file__).resolve().parents[3]


def serve_definitions(directory: Path, suffix: str) -> Path:
    """signalops.yaml with the model renamed `default_<suffix>`.

    The session shares one MLflow store, so a per-module model name keeps other
    tests' versions and champions out of sight.
    """
    data = yaml.safe_load((REPO / "signalops.yaml").read_text())
    for model in data["models"]:
        model["name"] = f"{model['name']}_{suffix}"
    path = directory / f"definitions-{suffix}.yaml"
    path.write_text(yaml.safe_dump(data))
    load_definitions(path)
    return path


def train_booster(model: ModelDefinition, seed: int) -> lgb.Booster:
    """A tiny binary booster on random data with the model's input columns."""
    rng = np.random.default_rng(seed)
    cols = model_columns(model)
    x = rng.normal(size=(300, len(cols)))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=cols), num_boost_round=8)


RegisterModel = Callable[[ModelDefinition, int], str]


@pytest.fixture(scope="session", name="serve_definitions")
def _serve_definitions() -> Callable[[Path, str], Path]:
    """serve_definitions(directory, suffix) -> path of a definitions file with unique names."""
    return serve_definitions


@pytest.fixture(scope="session", name="train")
def _train() -> Callable[[ModelDefinition, int], lgb.Booster]:
    """train(model, seed): the same tiny booster register_model logs for that seed."""
    return train_booster


@pytest.fixture(scope="module", name="register_model")
def _register_model(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> RegisterModel:
    """register(model, seed) -> version: register a booster as retrain does (the shared
    registry client), and make it champion.
    """
    from libs.common.registry import MlflowRegistry

    registry = MlflowRegistry(mlflow_uri, str(tmp_path_factory.mktemp("serve-artifacts")))

    def register(model: ModelDefinition, seed: int) -> str:
        version = registry.register(
            model.name, train_booster(model, seed), params={"seed": seed}, metrics={}, tags={}
        )
        registry.promote(model.name, version)
        return version

    return register

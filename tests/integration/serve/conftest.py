"""Serve integration fixtures: models registered in the session's MLflow under unique names,
ServeSettings wired to the session's broker, Redis, MLflow and Ray, a champion deployed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import yaml

from libs.common.clients.kafka import ensure_topics_of
from libs.common.definitions import ModelDefinition, load_definitions
from libs.common.features import model_columns
from libs.common.settings import Topics
from services.serve.settings import ServeSettings
from tests.integration.serve.stack import (
    DeployChampion,
    Deployed,
    MakeServeSettings,
    known_entity,
    on_ray,
    ordinal_values,
    write_vectors,
)

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


@pytest.fixture(scope="session", name="serve_settings")
def _serve_settings(redis_url: str, kafka_bootstrap: str, mlflow_uri: str) -> MakeServeSettings:
    """serve_settings(tmp, suffix, **overrides): ServeSettings on the session's broker,
    Redis and MLflow (no Ray), whose topics exist.

    Topics and the model's name end in `suffix`; the definitions file is written in `tmp`
    unless `definitions` is given, and the data directory is `tmp / "data"`.
    """

    async def make(tmp: Path, suffix: str, **overrides: Any) -> ServeSettings:
        fields: dict[str, Any] = {
            "data_dir": tmp / "data",
            "topics": Topics(**{k: f"{v}.{suffix}" for k, v in Topics().model_dump().items()}),
            "kafka_bootstrap": kafka_bootstrap,
            "kafka_partitions": 2,
            "redis_url": redis_url,
            "mlflow_tracking_uri": mlflow_uri,
            **overrides,
        }
        if "definitions" not in fields:
            fields["definitions"] = serve_definitions(tmp, suffix)
        settings = ServeSettings(**fields)
        await ensure_topics_of(settings)
        return settings

    return make


@pytest.fixture(scope="session", name="ray_serve_settings")
def _ray_serve_settings(
    serve_settings: MakeServeSettings, ray_cluster: str, serve_port: int
) -> MakeServeSettings:
    """ray_serve_settings(tmp, suffix, **overrides): serve_settings for one replica on the
    session's Ray cluster, its ingress on the session's serve port."""

    async def make(tmp: Path, suffix: str, **overrides: Any) -> ServeSettings:
        on_cluster = {"ray_address": ray_cluster, "serve_port": serve_port, "serve_num_replicas": 1}
        return await serve_settings(tmp, suffix, **{**on_cluster, **overrides})

    return make


@pytest.fixture(scope="module", name="deploy_champion")
def _deploy_champion(
    ray_serve_settings: MakeServeSettings,
    register_model: RegisterModel,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> DeployChampion:
    """deploy_champion(name, client_timeout_s=30, **overrides): an async context manager:
    champion v1 registered, the features of one entity (`known`) stored, the app deployed
    with `overrides` on Ray; it gives the Deployed app and deletes it on exit."""

    @asynccontextmanager
    async def deploy(
        name: str, *, client_timeout_s: float = 30.0, **overrides: Any
    ) -> AsyncIterator[Deployed]:
        suffix = uuid.uuid4().hex[:8]
        settings = await ray_serve_settings(tmp_path_factory.mktemp(name), suffix, **overrides)
        definitions = load_definitions(settings.definitions)
        register_model(definitions.models[0], 1)
        await write_vectors(
            redis_url, definitions, [(known_entity(suffix), ordinal_values(definitions))]
        )
        async with on_ray(settings, client_timeout_s=client_timeout_s) as http:
            yield Deployed(settings, definitions, http, suffix)

    return deploy

"""Serve unit fixtures: a small definitions set, tiny boosters, the service on fakes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pytest

from libs.common.clients.redis import MemoryFeatureStore, StoredVector
from libs.common.definitions import Definitions, ModelDefinition, parse_definitions
from libs.common.features import model_columns
from services.serve.adapters.memory import (
    MemoryModelEvents,
    MemoryModelSource,
    MemoryPredictionLog,
)
from services.serve.app import create_app
from services.serve.service import InferenceService
from services.serve.settings import ServeSettings

DEFINITIONS: dict[str, Any] = {
    "sources": [
        {
            "name": "sensors",
            "entity": "device",
            "fields": {"temp": {"type": "float"}, "vib": {"type": "float"}},
        }
    ],
    "feature_views": [
        {
            "name": "stats",
            "source": "sensors",
            "version": 2,
            "features": [
                {"name": "temp_last", "field": "temp", "agg": "last"},
                {"name": "vib_last", "field": "vib", "agg": "last"},
            ],
        },
        {
            "name": "hourly",
            "source": "sensors",
            "features": [{"name": "temp_max", "field": "temp", "agg": "max", "window_s": 3600}],
        },
    ],
    "models": [
        {
            "name": "default",
            "features": ["stats.temp_last", "stats.vib_last", "hourly.temp_max"],
            "fallback": {"score": 0.3},
        },
        {"name": "other", "features": ["stats.temp_last"], "fallback": {"score": 0.7}},
    ],
}

ADMIN_TOKEN = "unit-admin-token"


@pytest.fixture(name="definitions")
def _definitions() -> Definitions:
    return parse_definitions(DEFINITIONS)


def train_booster(model: ModelDefinition, *, seed: int = 0, rounds: int = 10) -> lgb.Booster:
    """A tiny binary LightGBM model on random data, with the model's column names."""
    rng = np.random.default_rng(seed)
    cols = model_columns(model)
    x = rng.normal(size=(300, len(cols)))
    y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    params = {
        "objective": "binary",
        "verbose": -1,
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "num_threads": 1,
    }
    return lgb.train(params, lgb.Dataset(x, y, feature_name=cols), num_boost_round=rounds)


@pytest.fixture(name="train")
def _train() -> Callable[..., lgb.Booster]:
    """train_booster(model, seed=0, rounds=10): a tiny booster for a model definition."""
    return train_booster


def vector(values: dict[str, float | None], *, age_s: float = 1.0) -> StoredVector:
    now = time.time()
    return StoredVector(values=values, as_of=now - age_s, updated_at=now - age_s)


@dataclass
class Harness:
    """The service on in-memory fakes, its app, and an HTTP client to the app."""

    service: InferenceService
    store: MemoryFeatureStore
    models: MemoryModelSource
    log: MemoryPredictionLog
    events: MemoryModelEvents
    client: httpx.AsyncClient
    definitions: Definitions

    async def put(
        self, entity_id: str, view: str, values: dict[str, float | None], age_s: float = 1.0
    ) -> None:
        v = self.definitions.view(view)
        await self.store.write_vectors([(view, v.version, entity_id, vector(values, age_s=age_s))])


MakeHarness = Callable[..., Any]


@pytest.fixture(name="make_harness")
async def _make_harness(definitions: Definitions) -> AsyncIterator[MakeHarness]:
    """Factory: a started service (champion v1 of 'default' unless told otherwise)."""
    made: list[Harness] = []

    async def make(
        *, register: bool = True, store: Any = None, start: bool = True, **overrides: Any
    ) -> Harness:
        settings = ServeSettings(**{"admin_token": ADMIN_TOKEN, "registry_poll_s": 0, **overrides})
        models = MemoryModelSource()
        if register:
            models.register("default", "1", train_booster(definitions.model("default")))
        mem_store = MemoryFeatureStore()
        log = MemoryPredictionLog()
        events = MemoryModelEvents()
        service = InferenceService(
            settings,
            definitions,
            store=store or mem_store,
            models=models,
            prediction_log=log,
            events=events,
        )
        if start:
            await service.start()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service)), base_url="http://serve"
        )
        h = Harness(service, mem_store, models, log, events, client, definitions)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.client.aclose()
        await h.service.stop()

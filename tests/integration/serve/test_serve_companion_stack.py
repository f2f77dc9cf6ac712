"""The companion model on the real stack: trained and registered in MLflow through the
registry client, loaded by serve's catalog, answering when the main model cannot.

Real MLflow (SQLite), Redis and Kafka; training joins the synthetic history in process.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pytest

from libs.common.definitions import Definitions, load_definitions
from libs.common.offline import OfflineStore
from libs.common.registry import MlflowRegistry, ModelIntegrityError
from libs.common.registry.mlflow import COMPANION_FILE, COMPANION_META, COMPANION_SHA256_TAG
from services.retrain.bootstrap import write_synthetic_history
from services.retrain.settings import RetrainSettings
from services.retrain.train import train_model
from services.serve.app import build_service, create_app
from services.serve.service import InferenceService
from tests.integration.serve.stack import MakeServeSettings, on_ray, write_vectors

pytestmark = pytest.mark.integration


@dataclass
class Trained:
    definitions: Definitions
    definitions_path: Path
    registry: MlflowRegistry
    version: str
    suffix: str

    @property
    def model(self) -> str:
        return self.definitions.models[0].name


@pytest.fixture(scope="module", name="trained")
def _trained(
    mlflow_uri: str, serve_definitions: Any, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """A version trained by retrain's train_model on synthetic history and made champion."""
    suffix = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("companion")
    path = serve_definitions(tmp, suffix)
    definitions = load_definitions(path)
    model = definitions.models[0].name
    store = OfflineStore(tmp / "offline")
    write_synthetic_history(store, definitions, model, entities=30, steps=80, step_s=30.0, seed=5)
    settings = RetrainSettings(
        data_dir=tmp / "data", definitions=path, mlflow_tracking_uri=mlflow_uri
    )
    registry = MlflowRegistry.from_settings(settings)
    result = train_model(
        settings, definitions, model, "companion test", registry=registry, offline_root=store.root
    )
    registry.promote(model, result.version)
    return Trained(definitions, path, registry, result.version, suffix)


def test_a_version_stores_its_companion_checked_by_sha256(trained: Trained) -> None:
    """companion.lgb and companion.json come back with the version; its sha256 is on the
    version, a tampered file is refused, and a version without one has none."""
    registry, model = trained.registry, trained.model
    text = registry.read_file(model, trained.version, COMPANION_FILE)
    meta_text = registry.read_file(model, trained.version, COMPANION_META)
    assert text is not None and meta_text is not None
    meta = json.loads(meta_text)
    assert lgb.Booster(model_str=text).feature_name() == meta["columns"]
    assert meta["metrics"]["auc"] > 0.6
    tags = registry._client.get_model_version(model, trained.version).tags
    assert tags[COMPANION_SHA256_TAG] == hashlib.sha256(text.encode()).hexdigest()
    card = json.loads(registry.read_file(model, trained.version, "model_card.json") or "{}")
    assert card["companion"]["features"] == meta["features"]

    # Another version with the same companion, whose stored file is then altered.
    main = registry.load_booster(model, trained.version)
    files = {COMPANION_FILE: text, COMPANION_META: meta_text}
    tampered = registry.register(model, main, params={}, metrics={}, tags={}, files=files)
    location = registry._client.get_model_version_download_uri(model, tampered)
    stored = Path(location.removeprefix("file://")) / COMPANION_FILE
    stored.write_text(text.replace("tree", "tree ", 1))
    with pytest.raises(ModelIntegrityError, match=r"companion\.lgb sha256"):
        registry.read_file(model, tampered, COMPANION_FILE)

    # A version registered without a companion (an older one) simply has none.
    bare = registry.register(model, main, params={}, metrics={}, tags={})
    assert registry.read_file(model, bare, COMPANION_FILE) is None


@pytest.fixture(name="served")
async def _served(
    trained: Trained, serve_settings: MakeServeSettings, tmp_path: Path
) -> AsyncIterator[tuple[InferenceService, httpx.AsyncClient]]:
    """Serve's service with its real adapters, started, and an HTTP client to its app."""
    settings = await serve_settings(
        tmp_path, trained.suffix, definitions=trained.definitions_path, registry_poll_s=0
    )
    service = build_service(settings)
    await service.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service)), base_url="http://serve"
        ) as client:
            yield service, client
    finally:
        await service.stop()


async def _put(redis_url: str, definitions: Definitions, entity: str) -> dict[str, float]:
    view = definitions.feature_views[0]
    values = {f.name: float(i % 3) for i, f in enumerate(view.features)}
    await write_vectors(redis_url, definitions, [(entity, values)])
    return {f"{view.name}.{k}": v for k, v in values.items()}


async def test_a_failing_model_is_answered_by_its_companion(
    trained: Trained,
    served: tuple[InferenceService, httpx.AsyncClient],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog loads the champion with its companion from MLflow; when the main model
    raises, the companion answers (degraded, variant fallback, the version), never a 5xx."""
    service, client = served
    champion = service.catalog.slot(trained.model).champion
    assert champion is not None and champion.version == trained.version
    assert champion.companion is not None
    entity = f"dev-{uuid.uuid4().hex[:8]}"
    values = await _put(redis_url, trained.definitions, entity)
    body = (await client.post("/v1/predict", json={"entity_id": entity})).json()
    assert (body["model"]["variant"], body["degraded"]) == ("champion", False)

    # The main model now fails at every predict.
    def explode(*args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("main model failed")

    monkeypatch.setattr(champion.predictor, "predict", explode)
    # Another entity: the first one's answer may be cached (same inputs, same version).
    entity = f"dev-{uuid.uuid4().hex[:8]}"
    values = await _put(redis_url, trained.definitions, entity)
    r = await client.post("/v1/predict", json={"entity_id": entity})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {
        "name": trained.model,
        "version": trained.version,
        "variant": "fallback",
    }
    assert (body["degraded"], body["reasons"]) == (True, ["model_failed", "companion"])
    # It is the companion's own score of the entity's stored inputs.
    companion = champion.companion
    row = [[values[ref.replace("__", ".")] for ref in companion.columns]]
    assert body["score"] == pytest.approx(float(companion.predict(row)[0]))
    # A batch is answered the same way, row by row.
    r = await client.post(
        "/v1/predict/batch", json={"requests": [{"entity_id": entity}, {"entity_id": "cold"}]}
    )
    assert r.status_code == 200
    first, cold = r.json()["predictions"]
    assert first["reasons"] == ["model_failed", "companion"]
    assert cold["reasons"] == ["no_features"]  # nothing to read: the constant prior
    assert cold["score"] == trained.definitions.models[0].fallback.score


async def test_partial_inputs_the_companion_covers_are_answered_by_it(
    trained: Trained, served: tuple[InferenceService, httpx.AsyncClient]
) -> None:
    """A cold entity whose request supplies only the companion's inputs: the companion
    answers (the main model would see mostly missing values)."""
    service, client = served
    champion = service.catalog.slot(trained.model).champion
    assert champion is not None and champion.companion is not None
    refs = [c.replace("__", ".") for c in champion.companion.columns]
    supplied = {ref: 1.0 for ref in refs}
    r = await client.post(
        "/v1/predict", json={"entity_id": f"cold-{uuid.uuid4().hex[:8]}", "features": supplied}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reasons"] == ["partial_features", "companion"]
    assert body["model"]["variant"] == "fallback"
    assert body["score"] == pytest.approx(float(champion.companion.predict([[1.0] * len(refs)])[0]))


async def test_a_deployed_replica_answers_with_the_companion_past_the_budget(
    trained: Trained,
    ray_serve_settings: MakeServeSettings,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """On Ray Serve over real HTTP, a main model that cannot answer within its budget (here
    1 µs, which no predict meets) is answered by the companion, degraded, never a 5xx."""
    settings = await ray_serve_settings(
        tmp_path,
        trained.suffix,
        definitions=trained.definitions_path,
        serve_model_timeout_ms=0.001,
    )
    entity = f"dev-{uuid.uuid4().hex[:8]}"
    await _put(redis_url, trained.definitions, entity)
    async with on_ray(settings) as http:
        answers = []
        for _ in range(5):
            r = await http.post("/v1/predict", json={"entity_id": entity})
            assert r.status_code == 200, r.text
            answers.append(r.json())
        assert {tuple(a["reasons"]) for a in answers} == {("model_timeout", "companion")}
        assert {a["model"]["variant"] for a in answers} == {"fallback"}
        assert {a["model"]["version"] for a in answers} == {trained.version}
        r = await http.post("/v1/predict/batch", json={"requests": [{"entity_id": entity}] * 3})
        assert r.status_code == 200, r.text
        assert {tuple(p["reasons"]) for p in r.json()["predictions"]} == {
            ("model_timeout", "companion")
        }

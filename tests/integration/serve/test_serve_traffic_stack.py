"""Traffic split, shadow mode and the prediction cache on the real stack: a Serve
deployment behind HAProxy, settings stored as MLflow registered-model tags, model
events and the prediction log on the real broker, features in real Redis.

One deployment for the module; the test that swaps the champion comes last.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.common.clients.kafka import KafkaPublisher
from libs.common.definitions import Definitions, load_definitions
from libs.common.registry import MlflowRegistry
from libs.common.schemas import ModelChanged, PredictionMade
from tests.integration.serve.stack import (
    Deployed,
    MakeServeSettings,
    on_ray,
    wait_for,
    write_vectors,
)

pytestmark = pytest.mark.integration

ENTITIES = 600


@dataclass
class TrafficDeployed(Deployed):
    """The module's app, with its registry and the entities whose features are stored."""

    registry: MlflowRegistry
    entities: list[str]


def values_of(definitions: Definitions, k: int) -> dict[str, float]:
    """Feature values of the k-th entity: varied, so scores differ between entities."""
    view = definitions.feature_views[0]
    return {f.name: float((k * 7 + i * 13) % 50) / 10 for i, f in enumerate(view.features)}


async def publish_event(deployed: TrafficDeployed, event: ModelChanged) -> None:
    publisher = KafkaPublisher(deployed.settings.kafka_bootstrap, client_id="serve-traffic-test")
    await publisher.start()
    try:
        await publisher.publish(deployed.settings.topics.models, event, key=event.model)
    finally:
        await publisher.stop()


async def set_traffic(deployed: TrafficDeployed, fraction: float, shadow: bool) -> dict[str, Any]:
    """Store the settings as the admin API does (registry tags, then a traffic_changed
    event), and wait until the replica reports them."""
    registry = deployed.registry
    await asyncio.to_thread(registry.set_traffic_settings, deployed.model, fraction, shadow)
    await publish_event(
        deployed, ModelChanged(kind="traffic_changed", model=deployed.model, version="")
    )

    async def applied() -> dict[str, Any] | None:
        view = dict((await deployed.http.get("/v1/models")).json())
        ok = (
            view["challenger_fraction"][deployed.model] == fraction
            and view["shadow"][deployed.model] is shadow
        )
        return view if ok else None

    return dict(await wait_for(applied, timeout_s=30))


async def predict_all(deployed: TrafficDeployed, entities: list[str]) -> list[dict[str, Any]]:
    r = await deployed.http.post(
        "/v1/predict/batch", json={"requests": [{"entity_id": e} for e in entities]}
    )
    assert r.status_code == 200, r.text
    return list(r.json()["predictions"])


async def read_predictions(
    deployed: TrafficDeployed, done: Callable[[dict[str, PredictionMade]], bool]
) -> dict[str, PredictionMade]:
    """Every PredictionMade on the predictions topic, by event id, once `done` says so."""
    topic = deployed.settings.topics.predictions
    consumer = AIOKafkaConsumer(
        bootstrap_servers=deployed.settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    seen: dict[str, PredictionMade] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(deployed.settings.kafka_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def complete() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    event = PredictionMade.model_validate_json(rec.value or b"")
                    seen[event.event_id] = event
            return done(seen)

        await wait_for(complete, timeout_s=30)
    finally:
        await consumer.stop()
    return seen


@pytest.fixture(scope="module", name="deployed")
async def _deployed(
    ray_serve_settings: MakeServeSettings,
    register_model,
    train,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TrafficDeployed]:
    """Champion v1 and challenger v2 registered, 600 entities' features stored, one replica."""
    suffix = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("serve-traffic")
    settings = await ray_serve_settings(
        tmp,
        suffix,
        registry_poll_s=600,  # changes reach the replica through events only
        challenger_fraction=0.0,
    )
    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    registry = MlflowRegistry(settings.tracking_uri, str(tmp / "artifacts"))
    assert register_model(model, 1) == "1"
    challenger = await asyncio.to_thread(
        registry.register, model.name, train(model, 2), params={}, metrics={}, tags={}
    )
    await asyncio.to_thread(
        registry._client.set_registered_model_alias, model.name, "challenger", challenger
    )
    entities = [f"dev-{suffix}-{k}" for k in range(ENTITIES)]
    await write_vectors(
        settings.redis_url,
        definitions,
        [(e, values_of(definitions, k)) for k, e in enumerate(entities)],
    )

    async with on_ray(settings) as http:
        yield TrafficDeployed(settings, definitions, http, suffix, registry, entities)


async def test_split_follows_the_registry_and_sticks_per_entity(deployed: TrafficDeployed) -> None:
    """A 0.3 split set in the registry: about 30% of entities are answered by the
    challenger, each entity by the same variant every time, and the log says which."""
    view = await set_traffic(deployed, 0.3, False)
    assert view["traffic"][deployed.model] == {"champion": 0.7, "challenger": 0.3}

    first = await predict_all(deployed, deployed.entities)
    variants = {p["entity_id"]: p["model"]["variant"] for p in first}
    share = sum(v == "challenger" for v in variants.values()) / len(variants)
    assert 0.23 < share < 0.37, share
    assert {p["model"]["version"] for p in first if p["model"]["variant"] == "challenger"} == {"2"}
    assert all(not p["degraded"] for p in first)

    again = await predict_all(deployed, deployed.entities)
    assert {p["entity_id"]: p["model"]["variant"] for p in again} == variants

    answered = {p["prediction_id"]: p["model"]["variant"] for p in first}
    logged = await read_predictions(deployed, lambda seen: set(answered) <= set(seen))
    assert {pid: logged[pid].model.variant for pid in answered} == answered
    assert not any(logged[pid].shadow for pid in answered)


async def test_shadow_scores_are_logged_and_never_returned(deployed: TrafficDeployed) -> None:
    """Shadow on: every answer is the champion's; the challenger's score of the same row
    is on the predictions topic as its own record marked shadow, never answered."""
    view = await set_traffic(deployed, 0.3, True)
    assert view["traffic"][deployed.model] == {"champion": 1.0}
    entities = deployed.entities[:50]
    answers = await predict_all(deployed, entities)
    assert {(p["model"]["variant"], p["model"]["version"]) for p in answers} == {("champion", "1")}
    answered = {p["prediction_id"] for p in answers}

    def shadows_of(seen: dict[str, PredictionMade]) -> list[PredictionMade]:
        return [e for e in seen.values() if e.shadow and e.entity_id in set(entities)]

    logged = await read_predictions(
        deployed,
        lambda seen: (
            answered <= set(seen) and len({e.entity_id for e in shadows_of(seen)}) == len(entities)
        ),
    )
    shadows = shadows_of(logged)
    assert {(e.model.variant, e.model.version) for e in shadows} == {("challenger", "2")}
    assert not answered & {e.event_id for e in shadows}
    by_entity = {logged[pid].entity_id: logged[pid] for pid in answered}
    for s in shadows:
        assert s.features == by_entity[s.entity_id].features  # the same row
    await set_traffic(deployed, 0.0, False)


async def test_cache_never_serves_stale_features_or_a_stale_model(
    deployed: TrafficDeployed, register_model
) -> None:
    """A repeat is a cache hit with the same score; after a feature update and after a
    new champion, the answer is the model's own score on the current inputs."""
    await set_traffic(deployed, 0.0, False)
    entity = deployed.entities[0]
    view = deployed.definitions.feature_views[0]

    async def one(body: dict[str, Any]) -> dict[str, Any]:
        r = await deployed.http.post("/v1/predict", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def scored_fresh(values: dict[str, float]) -> float:
        # Supplied values make another cache key: the model's own score for them.
        supplied = {f"{view.name}.{k}": v for k, v in values.items()}
        return float((await one({"entity_id": entity, "features": supplied}))["score"])

    async def hits() -> int:
        return int((await deployed.http.get("/healthz")).json()["counts"].get("cache_hit", 0))

    first = await one({"entity_id": entity})
    before = await hits()
    repeat = await one({"entity_id": entity})
    assert repeat["score"] == first["score"] and repeat["prediction_id"] != first["prediction_id"]
    assert await hits() == before + 1

    # A feature update: the next answer is the score of the new values.
    new_values = {k: v + 3.0 for k, v in values_of(deployed.definitions, 0).items()}
    await write_vectors(deployed.settings.redis_url, deployed.definitions, [(entity, new_values)])
    updated = await one({"entity_id": entity})
    assert updated["score"] == await scored_fresh(new_values)
    assert updated["score"] != first["score"]

    # A new champion: the answer comes from it, not from the cached v1 score.
    version = register_model(deployed.definitions.models[0], 3)
    await publish_event(
        deployed,
        ModelChanged(kind="promoted", model=deployed.model, version=version, alias="champion"),
    )

    async def serves_new() -> dict[str, Any] | None:
        body = await one({"entity_id": entity})
        return body if body["model"]["version"] == version else None

    swapped = await wait_for(serves_new, timeout_s=60)
    assert swapped["score"] == await scored_fresh(new_values)
    assert swapped["score"] != updated["score"]
    stats = (await deployed.http.get("/healthz")).json()["prediction_cache"]
    assert stats["enabled"] is True and stats["hits"] >= 1 and stats["misses"] >= 3


def test_registry_keeps_traffic_settings_as_model_tags(
    mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The MLflow registry stores fraction and shadow durably per model: unset reads
    (None, False), None leaves a setting as it is, a model with no version yet is created,
    an out-of-range fraction is refused and a hand-edited bad tag reads as unset."""
    registry = MlflowRegistry(mlflow_uri, str(tmp_path_factory.mktemp("traffic-tags")))
    name = f"traffic_{uuid.uuid4().hex[:8]}"
    assert registry.traffic_settings(name) == (None, False)
    registry.set_traffic_settings(name, 0.25, None)
    registry.set_traffic_settings(name, None, True)
    again = MlflowRegistry(mlflow_uri, str(tmp_path_factory.mktemp("traffic-tags-2")))
    assert again.traffic_settings(name) == (0.25, True)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        registry.set_traffic_settings(name, 1.5, None)
    registry._client.set_registered_model_tag(name, "signalops.challenger_fraction", "lots")
    assert registry.traffic_settings(name) == (None, True)

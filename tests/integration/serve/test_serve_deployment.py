"""The serve application on the session's Ray cluster, over real HTTP, Redis, Kafka, MLflow.

One deployment for the whole module (deploys are the slow part); tests that move the
champion come last and the others read the current champion from the registry.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.common.clients.kafka import KafkaPublisher
from libs.common.schemas import ModelChanged, PredictionMade
from libs.common.testing import paused
from tests.integration.serve.stack import DeployChampion, Deployed, wait_for

pytestmark = pytest.mark.integration
TOKEN = "integration-admin-token"  # what tests/conftest.py puts in the Ray nodes' env


@pytest.fixture(scope="module", name="deployed")
async def _deployed(deploy_champion: DeployChampion) -> AsyncIterator[Deployed]:
    """Register champion v1, store one entity's features, deploy, yield an HTTP client."""
    # registry_poll_s: so a swap in these tests can only come from the event
    async with deploy_champion("serve", admin_token=TOKEN, registry_poll_s=600) as deployed:
        yield deployed


def champion_version(mlflow_uri: str, name: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(mlflow_uri).get_model_version_by_alias(name, "champion").version)


async def test_ready_after_deploy(deployed: Deployed) -> None:
    """/readyz is 200 and names the loaded champion and the followed model events."""
    r = await deployed.http.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"][deployed.model].startswith("champion v")
    assert body["model_events"] == "following"


async def test_predict_answers_with_the_champion(deployed: Deployed, mlflow_uri: str) -> None:
    """A known entity is scored by the registry's champion, with features' freshness."""
    r = await deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {
        "name": deployed.model,
        "variant": "champion",
        "version": champion_version(mlflow_uri, deployed.model),
    }
    assert 0 <= body["score"] <= 1 and body["degraded"] is False
    assert body["feature_freshness_s"] >= 0


async def test_cold_start_gets_the_fallback(deployed: Deployed) -> None:
    """An entity without features gets the definitions' fallback score, degraded."""
    r = await deployed.http.post(
        "/v1/predict?explain=true",
        json={"entity_id": deployed.unknown},
        headers={"X-Priority": "low"},
    )
    body = r.json()
    assert body["score"] == deployed.definitions.models[0].fallback.score
    assert (body["model"]["variant"], body["reasons"]) == ("fallback", ["no_features"])


async def test_contract_errors_pass_through_the_ingress(deployed: Deployed) -> None:
    """404, 400 and 422 reach the client through HAProxy with their messages."""
    r = await deployed.http.post("/v1/predict", json={"entity_id": "x", "model": "nope"})
    assert r.status_code == 404 and "is not defined" in r.json()["message"]
    r = await deployed.http.post(
        "/v1/predict", json={"entity_id": "x"}, headers={"X-Priority": "asap"}
    )
    assert r.status_code == 400
    r = await deployed.http.post("/v1/predict", json={"entity": "x"})
    assert r.status_code == 422 and "entity_id" in r.json()["message"]


async def test_batch_answers_in_order(deployed: Deployed) -> None:
    """A batch answers each entity in request order: scored and cold start."""
    r = await deployed.http.post(
        "/v1/predict/batch",
        json={"requests": [{"entity_id": deployed.known}, {"entity_id": deployed.unknown}]},
    )
    preds = r.json()["predictions"]
    assert [(p["entity_id"], p["model"]["variant"]) for p in preds] == [
        (deployed.known, "champion"),
        (deployed.unknown, "fallback"),
    ]


async def test_predictions_are_logged_to_kafka(deployed: Deployed, kafka_bootstrap: str) -> None:
    """A served prediction arrives on the predictions topic keyed by entity id."""
    r = await deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
    prediction_id = r.json()["prediction_id"]
    topic = deployed.settings.topics.predictions
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(deployed.settings.kafka_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: dict[str, tuple[bytes | None, PredictionMade]] = {}

        async def logged() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    event = PredictionMade.model_validate_json(rec.value or b"")
                    seen[event.event_id] = (rec.key, event)
            return prediction_id in seen

        await wait_for(logged, timeout_s=30)
    finally:
        await consumer.stop()
    key, event = seen[prediction_id]
    assert key == deployed.known.encode()
    assert event.model.variant == "champion" and len(event.features) == 8


async def test_admin_reload_needs_the_token(deployed: Deployed) -> None:
    """Reload answers 401 without a token or with an unknown one, 200 with the admin token."""
    assert (await deployed.http.post("/v1/admin/reload")).status_code == 401
    wrong = await deployed.http.post("/v1/admin/reload", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    ok = await deployed.http.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["changed"] == []


async def test_model_event_hot_swaps_the_champion(
    deployed: Deployed, register_model, kafka_bootstrap: str
) -> None:
    """A new champion announced on models.events is served without a redeploy."""
    # Register version 2 and move the champion alias, as retrain's promotion does.
    version = register_model(deployed.definitions.models[0], 2)
    assert version == "2"
    # Announce it on the real broker.
    publisher = KafkaPublisher(kafka_bootstrap, client_id="serve-test")
    await publisher.start()
    try:
        await publisher.publish(
            deployed.settings.topics.models,
            ModelChanged(kind="promoted", model=deployed.model, version=version, alias="champion"),
            key=deployed.model,
        )
    finally:
        await publisher.stop()

    # The replica reloads in the background; predictions switch to the new version.
    async def serves_new_version() -> bool:
        r = await deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
        return r.status_code == 200 and r.json()["model"]["version"] == version

    await wait_for(serves_new_version, timeout_s=60)
    models = (await deployed.http.get("/v1/models")).json()
    assert models["models"][0]["name"] == deployed.model
    assert (models["models"][0]["version"], models["models"][0]["variant"]) == (version, "champion")
    assert models["traffic"][deployed.model] == {"champion": 1.0}


async def test_redis_paused_answers_degraded_never_5xx(deployed: Deployed, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Redis frozen (SIGSTOP) for 5 s: every predict answers 200 degraded with the reason
    (the breaker fails reads fast), and scored answers come back after SIGCONT.
    """
    statuses: list[int] = []
    reasons: set[str] = set()
    with paused(redis_server.pid):
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            r = await deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
            statuses.append(r.status_code)
            if r.status_code == 200:
                body = r.json()
                assert body["degraded"] is True
                reasons.update(body["reasons"])
    assert statuses and set(statuses) == {200}
    assert "feature_store_unavailable" in reasons

    async def scored_again() -> bool:
        r = await deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
        return r.status_code == 200 and r.json()["degraded"] is False

    await wait_for(
        scored_again, timeout_s=60, interval_s=0.5, what="serve recovers after Redis came back"
    )

"""Online feature reads through the deployed serve app: real Redis, Ray Serve, HAProxy.

Vectors are written to the session's redis-server with RedisFeatureStore and read
back over HTTP. No model is registered: feature reads do not need one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from ray import serve

from libs.common.clients.kafka import ensure_topics
from libs.common.clients.redis import RedisFeatureStore, StoredVector, make_redis
from libs.common.definitions import Definitions, load_definitions
from libs.common.settings import Topics
from libs.common.testing import paused
from services.serve.main import APP_NAME, deploy
from services.serve.settings import ServeSettings

pytestmark = pytest.mark.integration
LIMIT = 5


@dataclass
class Deployed:
    definitions: Definitions
    http: httpx.AsyncClient
    suffix: str
    written_at: float

    @property
    def view(self) -> str:
        return self.definitions.feature_views[0].name


@pytest.fixture(scope="module", name="deployed")
async def _deployed(
    ray_cluster: str,
    serve_port: int,
    redis_url: str,
    kafka_bootstrap: str,
    mlflow_uri: str,
    serve_definitions,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployed]:
    """Write two entities' vectors to Redis, deploy serve, yield an HTTP client."""
    suffix = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("serve-features")
    definitions_path = serve_definitions(tmp, suffix)
    definitions = load_definitions(definitions_path)
    settings = ServeSettings(
        data_dir=tmp / "data",
        definitions=definitions_path,
        topics=Topics(**{k: f"{v}.{suffix}" for k, v in Topics().model_dump().items()}),
        kafka_bootstrap=kafka_bootstrap,
        kafka_partitions=1,
        redis_url=redis_url,
        mlflow_tracking_uri=mlflow_uri,
        ray_address=ray_cluster,
        serve_port=serve_port,
        serve_num_replicas=1,
        features_batch_max=LIMIT,
        registry_startup_wait_s=1,
        registry_poll_s=0,
        breaker_reset_s=1,  # the Redis-paused test must not leave reads failing long
    )
    await ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)

    # Two entities' vectors, as the features service writes them; one holds a string.
    view = definitions.feature_views[0]
    now = time.time()
    values: dict[str, float | str | None] = {f.name: float(i) for i, f in enumerate(view.features)}
    values[view.features[0].name] = "ok"  # a categorical `last` is stored as a string
    store = RedisFeatureStore(make_redis(redis_url))
    await store.write_vectors(
        [
            (view.name, view.version, f"a-{suffix}", StoredVector(values, now - 60, now)),
            (view.name, view.version, f"b-{suffix}", StoredVector(values, now - 60, now)),
        ]
    )
    await store.close()

    await asyncio.to_thread(deploy, settings, timeout_s=120)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{serve_port}", timeout=30) as http:
        yield Deployed(definitions, http, suffix, now)
    await asyncio.to_thread(serve.delete, APP_NAME)


async def test_reads_back_what_redis_holds(deployed: Deployed) -> None:
    """A stored vector comes back over HTTP with its values (strings kept) and times."""
    r = await deployed.http.get(f"/v1/features/a-{deployed.suffix}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["found"] is True and body["missing_views"] == []
    stored = body["views"][deployed.view]
    first, second = (f.name for f in deployed.definitions.feature_views[0].features[:2])
    assert (stored["values"][first], stored["values"][second]) == ("ok", 1.0)
    assert 59 <= stored["age_s"] < 120 and 0 <= stored["freshness_s"] < 60


async def test_errors_pass_through_the_ingress(deployed: Deployed) -> None:
    """Cold start 404, unknown view 400 and the batch limit 413 reach the client."""
    r = await deployed.http.get(f"/v1/features/cold-{deployed.suffix}")
    assert r.status_code == 404 and "cold start" in r.json()["message"]
    r = await deployed.http.get(f"/v1/features/a-{deployed.suffix}?view=nope")
    assert r.status_code == 400 and deployed.view in r.json()["message"]
    too_many = [f"e{i}" for i in range(LIMIT + 1)]
    r = await deployed.http.post("/v1/features/batch", json={"entity_ids": too_many})
    assert r.status_code == 413 and f"at most {LIMIT}" in r.json()["message"]


async def test_batch_answers_in_order(deployed: Deployed) -> None:
    """A batch answers every entity in request order with `found`."""
    ids = [f"b-{deployed.suffix}", f"cold-{deployed.suffix}", f"a-{deployed.suffix}"]
    r = await deployed.http.post(
        "/v1/features/batch", params={"view": deployed.view}, json={"entity_ids": ids}
    )
    assert r.status_code == 200, r.text
    got = [(e["entity_id"], e["found"]) for e in r.json()["entities"]]
    assert got == [(ids[0], True), (ids[1], False), (ids[2], True)]


async def test_redis_paused_is_503_with_retry_after(deployed: Deployed, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Redis frozen (SIGSTOP): reads answer 503 with Retry-After, then recover."""
    with paused(redis_server.pid):
        r = await deployed.http.get(f"/v1/features/a-{deployed.suffix}")
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"] == "feature_store_unavailable"
    # Bounded wait for the breaker (reset 1 s) to let reads through again.
    deadline = time.monotonic() + 15
    while (await deployed.http.get(f"/v1/features/a-{deployed.suffix}")).status_code != 200:
        assert time.monotonic() < deadline, "feature reads did not recover after Redis resumed"
        await asyncio.sleep(0.25)

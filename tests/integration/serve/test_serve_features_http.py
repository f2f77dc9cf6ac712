"""Online feature reads through the deployed serve app: real Redis, Ray Serve, HAProxy.

Vectors are written to the session's redis-server with RedisFeatureStore and read
back over HTTP. No model is registered: feature reads do not need one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from libs.common.definitions import load_definitions
from libs.common.testing import paused
from tests.integration.serve.stack import (
    Deployed,
    MakeServeSettings,
    on_ray,
    ordinal_values,
    wait_for,
    write_vectors,
)

pytestmark = pytest.mark.integration
LIMIT = 5


@pytest.fixture(scope="module", name="deployed")
async def _deployed(
    ray_serve_settings: MakeServeSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployed]:
    """Write two entities' vectors to Redis, deploy serve, yield an HTTP client."""
    suffix = uuid.uuid4().hex[:8]
    settings = await ray_serve_settings(
        tmp_path_factory.mktemp("serve-features"),
        suffix,
        kafka_partitions=1,
        features_batch_max=LIMIT,
        registry_startup_wait_s=1,
        registry_poll_s=0,
        breaker_reset_s=1,  # the Redis-paused test must not leave reads failing long
    )
    definitions = load_definitions(settings.definitions)

    # Two entities' vectors, as the features service writes them; one holds a string.
    values = ordinal_values(definitions)
    values[definitions.feature_views[0].features[0].name] = "ok"  # a categorical `last`
    entities = [f"a-{suffix}", f"b-{suffix}"]
    await write_vectors(settings.redis_url, definitions, [(e, values) for e in entities], age_s=60)

    async with on_ray(settings, timeout_s=120) as http:
        yield Deployed(settings, definitions, http, suffix)


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
    async def reads_again() -> bool:
        return (await deployed.http.get(f"/v1/features/a-{deployed.suffix}")).status_code == 200

    await wait_for(reads_again, timeout_s=15, what="feature reads recover after Redis resumed")

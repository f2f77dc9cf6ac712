"""Priorities and deadlines on the real stack: a Serve deployment behind HAProxy, Redis,
Kafka and MLflow. Redis is frozen (SIGSTOP) to hold requests in flight, so the replica's
load is set by the test rather than by the machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.common.testing import paused
from tests.integration.serve.stack import DeployChampion, Deployed, wait_for

pytestmark = pytest.mark.integration

# Requests wait this long on frozen Redis: far longer than any step of a test, so the
# held requests stay in flight however slow the machine is.
FEATURE_TIMEOUT_S = 30.0
SHED_WITHIN_S = 5.0  # "at once": well before any request could have timed out
POLL_S = 0.05  # how often a test reads the replica's counts while requests are held


@pytest.fixture(scope="module", name="deployed")
async def _deployed(deploy_champion: DeployChampion) -> AsyncIterator[Deployed]:
    """One replica with small class limits (low 2, normal 4, hard cap 64) and queues."""
    async with deploy_champion(
        "serve-priorities",
        client_timeout_s=60,
        registry_poll_s=600,
        priority_low_limit=2,
        priority_normal_limit=4,
        priority_hard_cap=64,
        priority_queue_low=0,
        priority_queue_normal=2,
        priority_queue_high=8,
        priority_queue_max_wait_s=30.0,
        serve_default_deadline_ms=30_000,
        feature_timeout_s=FEATURE_TIMEOUT_S,
        breaker_fail_max=1000,  # keep reads waiting on frozen Redis, not failing fast
    ) as deployed:
        yield deployed


async def _health(deployed: Deployed) -> dict[str, Any]:
    return dict((await deployed.http.get("/healthz")).json())


async def test_overload_sheds_low_then_normal_and_serves_high(
    deployed: Deployed,
    redis_server,  # type: ignore[no-untyped-def]
) -> None:
    """With the replica held at its normal limit: low is shed at once (503 + Retry-After),
    normal waits in its queue (a full queue sheds at once, a spent deadline answers
    deadline_exceeded without the work), high is admitted and answered (200)."""
    before = await _health(deployed)

    async def predict(priority: str, **headers: str) -> httpx.Response:
        return await deployed.http.post(
            "/v1/predict",
            json={"entity_id": deployed.known},
            headers={"X-Priority": priority, **headers},
        )

    with paused(redis_server.pid):
        # Four normal requests wait on frozen Redis: in flight == the normal limit.
        held = [asyncio.create_task(predict("normal")) for _ in range(4)]

        async def four_in_flight() -> bool:
            return (await _health(deployed))["in_flight"] == 4

        await wait_for(four_in_flight, interval_s=POLL_S)

        # Low is over its limit and has no queue: shed at once, never held to a timeout.
        started = time.monotonic()
        low = await predict("low")
        low_s = time.monotonic() - started
        assert (low.status_code, low.json()["error"]) == (503, "overloaded")
        assert low.headers["Retry-After"] == "1"
        assert low_s < SHED_WITHIN_S

        # Normal queues (2 places); the third is shed at once.
        queued = [asyncio.create_task(predict("normal")) for _ in range(2)]

        async def two_queued() -> bool:
            return (await _health(deployed))["queued"]["normal"] == 2

        await wait_for(two_queued, interval_s=POLL_S)
        full = await predict("normal")
        assert (full.status_code, full.json()["error"]) == (503, "overloaded")
        assert "queue full" in full.json()["message"]

        # High is admitted past the normal limit.
        high = asyncio.create_task(predict("high"))

        async def five_in_flight() -> bool:
            return (await _health(deployed))["in_flight"] == 5

        await wait_for(five_in_flight, interval_s=POLL_S)

    # Redis answers again: the held, queued and high requests are all answered.
    assert (await high).status_code == 200
    assert [(await t).status_code for t in held + queued] == [200] * 6
    after = await _health(deployed)
    shed = {p: after["shed"].get(p, 0) - before["shed"].get(p, 0) for p in ("low", "normal")}
    assert shed == {"low": 1, "normal": 1}
    assert after["shed"].get("high", 0) == before["shed"].get("high", 0) == 0
    assert after["in_flight"] == 0


async def test_deadline_passing_in_the_queue_skips_the_work(
    deployed: Deployed,
    redis_server,  # type: ignore[no-untyped-def]
) -> None:
    """A queued normal request whose X-Deadline-Ms passes first is answered 503
    deadline_exceeded, and is never logged as a prediction (no work was done)."""
    with paused(redis_server.pid):
        held = [
            asyncio.create_task(
                deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
            )
            for _ in range(4)
        ]

        async def four_in_flight() -> bool:
            return (await _health(deployed))["in_flight"] == 4

        await wait_for(four_in_flight, interval_s=POLL_S)
        before = await _health(deployed)
        late = await deployed.http.post(
            "/v1/predict", json={"entity_id": deployed.known}, headers={"X-Deadline-Ms": "200"}
        )
        assert (late.status_code, late.json()["error"]) == (503, "deadline_exceeded")
        assert late.headers["Retry-After"] == "1"
    assert [(await t).status_code for t in held] == [200] * 4
    after = await _health(deployed)
    expired = after["deadline_exceeded"].get("normal", 0)
    assert expired == before["deadline_exceeded"].get("normal", 0) + 1
    served = sum(v for k, v in after["counts"].items() if k.startswith(("served_", "fallback_")))
    served_before = sum(
        v for k, v in before["counts"].items() if k.startswith(("served_", "fallback_"))
    )
    assert served == served_before + 4  # the four held ones; not the expired one


async def test_feature_read_is_cut_at_the_deadline(
    deployed: Deployed,
    redis_server,  # type: ignore[no-untyped-def]
) -> None:
    """A short budget bounds the online-store read below the feature timeout: the answer
    is the fallback, degraded with deadline_exceeded, never an error."""
    with paused(redis_server.pid):
        started = time.monotonic()
        r = await deployed.http.post(
            "/v1/predict",
            json={"entity_id": deployed.known},
            headers={"X-Deadline-Ms": "300", "X-Priority": "high"},
        )
        took = time.monotonic() - started
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"]["variant"], body["degraded"]) == ("fallback", True)
    assert body["reasons"] == ["deadline_exceeded"]
    assert took < SHED_WITHIN_S


async def test_bad_deadline_header_is_400_through_the_ingress(deployed: Deployed) -> None:
    """An invalid X-Deadline-Ms reaches the client as 400 naming the value."""
    r = await deployed.http.post(
        "/v1/predict", json={"entity_id": deployed.known}, headers={"X-Deadline-Ms": "soon"}
    )
    assert r.status_code == 400 and "'soon'" in r.json()["message"]

"""Deadlines and shedding on the request path: X-Deadline-Ms, the feature read's budget,
503 with Retry-After for shed and expired requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from libs.common.clients.redis import MemoryFeatureStore, StoredVector
from services.serve.core.priority import Deadline
from services.serve.errors import DeadlineExceeded
from services.serve.schemas import PredictRequest

FULL = {"temp_last": 70.0, "vib_last": 1.5}


class GatedStore(MemoryFeatureStore):
    """A store whose reads wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reads = 0

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        self.reads += 1
        await self.gate.wait()
        return await super().read_vectors(views, entity_ids)


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Bounded wait for an asynchronous effect."""
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - polls an effect that has no event
            await asyncio.sleep(0.005)


async def test_feature_read_gets_what_is_left_of_the_budget(make_harness) -> None:
    """A slow read is cut at the request's deadline (before the feature timeout): the answer
    is the fallback, degraded with reason deadline_exceeded, and the breaker stays closed."""
    store = GatedStore()
    h = await make_harness(store=store, feature_timeout_s=30, breaker_fail_max=1)
    clock = h.service.limiter.clock
    (answer,) = await h.service.predict(
        [PredictRequest(entity_id="dev-1")], deadline=Deadline.after_ms(30, clock())
    )
    assert answer.model.variant == "fallback" and answer.degraded
    assert answer.reasons == ["deadline_exceeded"]
    assert h.service.reader.state == "closed"  # the client's budget is not Redis's fault
    assert h.log.records[0][1].reasons == ["deadline_exceeded"]


async def test_spent_budget_skips_the_work(make_harness) -> None:
    """A request whose deadline passed before its work began reads nothing, logs nothing."""
    store = GatedStore()
    h = await make_harness(store=store)
    spent = Deadline(h.service.limiter.clock() - 0.001)
    with pytest.raises(DeadlineExceeded, match="deadline passed before its work began"):
        await h.service.predict([PredictRequest(entity_id="dev-1")], deadline=spent)
    assert store.reads == 0 and h.log.records == []


async def test_ample_budget_answers_as_usual(make_harness) -> None:
    """With budget to spare the deadline changes nothing."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    (answer,) = await h.service.predict(
        [PredictRequest(entity_id="dev-1")],
        deadline=Deadline.after_ms(10_000, h.service.limiter.clock()),
    )
    assert answer.model.variant == "champion" and not answer.degraded


async def test_bad_deadline_header_is_400(make_harness) -> None:
    """An X-Deadline-Ms that is not a whole number of ms in range is a 400 naming it."""
    h = await make_harness()
    for value in ("soon", "0", "1.5"):
        r = await h.client.post(
            "/v1/predict", json={"entity_id": "x"}, headers={"X-Deadline-Ms": value}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "bad_deadline" and value in r.json()["message"]


async def test_shed_and_expired_are_503_with_retry_after(make_harness) -> None:
    """Over the limits: low with a full queue is shed at once (503 overloaded); normal
    queued past its deadline is 503 deadline_exceeded; high is served."""
    store = GatedStore()
    h = await make_harness(
        store=store,
        priority_low_limit=1,
        priority_normal_limit=2,
        priority_hard_cap=3,
        priority_queue_low=0,
        priority_queue_normal=1,
        priority_queue_max_wait_s=30,
        feature_timeout_s=30,
        serve_default_deadline_ms=30_000,
    )
    held = [
        asyncio.create_task(h.client.post("/v1/predict", json={"entity_id": f"n{i}"}))
        for i in range(2)
    ]
    await _until(lambda: h.service.limiter.in_flight == 2)
    low = await h.client.post("/v1/predict", json={"entity_id": "l"}, headers={"X-Priority": "low"})
    assert (low.status_code, low.json()["error"]) == (503, "overloaded")
    assert low.headers["Retry-After"] == "1"
    normal = await h.client.post(
        "/v1/predict", json={"entity_id": "n"}, headers={"X-Deadline-Ms": "50"}
    )
    assert (normal.status_code, normal.json()["error"]) == (503, "deadline_exceeded")
    assert normal.headers["Retry-After"] == "1"
    high = asyncio.create_task(
        h.client.post("/v1/predict", json={"entity_id": "h"}, headers={"X-Priority": "high"})
    )
    await _until(lambda: h.service.limiter.in_flight == 3)
    store.gate.set()
    assert (await high).status_code == 200
    assert [(await t).status_code for t in held] == [200, 200]
    health = (await h.client.get("/healthz")).json()
    assert health["shed"] == {"low": 1} and health["deadline_exceeded"] == {"normal": 1}
    assert h.service.limiter.in_flight == 0

"""A polled source against the real broker and Redis: a local HTTP source that fails,
hangs and recovers; its breaker, the stale fallback, its expiry and the recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from libs.common.clients.kafka import DeadLetters, MemoryPublisher
from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import Definitions, load_definitions, parse_definitions
from libs.common.net import free_port
from libs.common.schemas import Signal, utcnow
from libs.common.settings import Topics
from libs.common.testing import deliveries
from services.features.handlers import FeaturesHandler
from services.serve.adapters.features import GuardedFeatureReader
from tests.integration.ingest.ingest_server import (
    MakeIngestSettings,
    eventually,
    served,
    serving,
    topic_reader,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
SECRET = "plant-api-secret-value"
MAX_STALE_S = 4.0


@dataclass
class PlantApi:
    """The polled source: answers its readings, 503s, or hangs, as the test says."""

    mode: str = "ok"  # ok | fail | hang
    readings: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0

    async def endpoint(self, request: Request) -> Response:
        self.calls += 1
        if request.headers.get("x-api-key") != SECRET:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if self.mode == "fail":
            return JSONResponse({"error": "maintenance"}, status_code=503)
        if self.mode == "hang":
            await self.release.wait()  # past the poller's timeout; released at teardown
        return JSONResponse({"data": {"readings": self.readings}})


def reading(device: str, at: datetime, temperature: float) -> dict[str, Any]:
    return {
        "device": {"id": device},
        "observed": at.isoformat().replace("+00:00", "Z"),
        "temp_c": temperature,
        "vib": 1.5,
        "state": "ok",
    }


def polled_definitions(url: str) -> Definitions:
    """The repository's definitions plus `plant_api`, polled from `url`."""
    base = load_definitions(REPO / "signalops.yaml").model_dump(mode="json", exclude_none=True)
    plant = {
        "name": "plant_api",
        "entity": "device",
        "fields": base["sources"][0]["fields"],
        "poll": {
            "url": url,
            "interval_s": 0.2,
            "timeout_s": 0.5,
            "attempts": 1,
            "fail_max": 2,
            "reset_s": 1.0,
            "max_stale_s": MAX_STALE_S,
            "mapping": {
                "records": "data.readings",
                "entity_id": "device.id",
                "event_time": "observed",
                "fields": {"temperature": "temp_c", "vibration": "vib", "status": "state"},
            },
            "auth": {"header": "X-Api-Key", "env": "PLANT_API_KEY"},
        },
    }
    return parse_definitions({**base, "sources": [*base["sources"], plant]})


@dataclass
class Valid:
    """signals.valid read from the beginning; `plant()` holds the polled source's signals."""

    consumer: AIOKafkaConsumer
    got: list[Signal] = field(default_factory=list)

    async def drain(self) -> list[Signal]:
        """Read until a poll finds nothing more (all that is acknowledged so far)."""
        while batches := await self.consumer.getmany(timeout_ms=300):
            self.got.extend(
                Signal.from_bytes(r.value) for part in batches.values() for r in part if r.value
            )
        return self.plant()

    def plant(self) -> list[Signal]:
        return [s for s in self.got if s.source == "plant_api"]


@pytest.fixture(name="stack")
async def _stack(
    make_ingest_settings: MakeIngestSettings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[PlantApi, str, Valid]]:
    """The plant API on a free port, ingest polling it, and a reader of signals.valid."""
    api = PlantApi()
    plant = Starlette(routes=[Route("/readings", api.endpoint)])
    settings = await make_ingest_settings()
    monkeypatch.setenv("PLANT_API_KEY", SECRET)
    async with served(plant, port := free_port(), stop_timeout_s=30):
        definitions = polled_definitions(f"http://127.0.0.1:{port}/readings")
        async with (
            serving(settings, definitions=definitions) as url,
            topic_reader(settings, settings.topics.valid) as consumer,
        ):
            try:
                yield api, url, Valid(consumer)
            finally:
                api.release.set()  # a poll held by the API must not hold up the stop


@dataclass
class Downstream:
    """The features handler on the real Redis, and serve's reader of stale sources."""

    features: FeaturesHandler
    reader: GuardedFeatureReader
    offset: int = 0

    async def apply(self, signals: list[Signal]) -> dict[str, float]:
        """Apply `signals` as features would consume them; what serve then reads."""
        await self.features.on_valid_signals(deliveries("signals.valid", signals, self.offset))
        self.offset += len(signals)
        self.reader._stale_read_at = float("-inf")  # read now, not within its cache second
        return await self.reader.stale_sources()


@pytest.fixture(name="downstream")
async def _downstream(redis_url: str) -> AsyncIterator[Downstream]:
    store = RedisFeatureStore(make_redis(redis_url))
    definitions = polled_definitions("http://127.0.0.1:9/unused")
    features = FeaturesHandler(
        definitions, store, DeadLetters(MemoryPublisher(), Topics().dlq, "features"), Topics()
    )
    yield Downstream(features, GuardedFeatureReader(store, timeout_s=2, fail_max=5, reset_s=5))
    await store.close()


async def source_state(client: httpx.AsyncClient) -> dict[str, Any]:
    """The plant API's entry in ingest's /readyz body (ingest itself stays ready)."""
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()["sources"]["plant_api"]
    return state


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float | None:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_polled_source_down_stale_expired_and_recovered(
    stack: tuple[PlantApi, str, Valid], downstream: Downstream
) -> None:
    """A polled source that fails opens its breaker and its snapshot is re-emitted flagged
    stale up to max_stale_s, then nothing; once it answers again a half-open probe
    closes the breaker and fresh records flow unflagged. Features marks the source
    stale for serve meanwhile, without applying the re-emitted events again."""
    api, ingest_url, valid = stack
    now = utcnow()
    api.readings = [reading("dev-1", now, 21.0), reading("dev-2", now, 22.5)]
    async with httpx.AsyncClient(base_url=ingest_url, timeout=10) as client:
        # 1. The source answers: its two records reach signals.valid once each, unflagged
        # (later polls of the same records are duplicates, not published again).
        async def fresh_polled() -> bool:
            return (
                len(await valid.drain()) >= 2 and (await source_state(client))["serving"] == "fresh"
            )

        await eventually(fresh_polled, timeout_s=30)
        first = valid.plant()
        assert {s.entity_id for s in first} == {"dev-1", "dev-2"}
        assert not any(s.stale for s in first)
        assert (await source_state(client))["breaker"] == "closed"
        polls_before = api.calls

        async def three_more_polls() -> bool:
            return api.calls >= polls_before + 3

        await eventually(three_more_polls, timeout_s=10)
        assert len(await valid.drain()) == 2, "a repeated poll of the same records was published"

        # 2. The source fails: the breaker opens (metric and /readyz) and the snapshot is
        # re-emitted with the same event ids, flagged stale with its poll time.
        api.mode = "fail"

        async def breaker_open() -> bool:
            state = await source_state(client)
            return state["breaker"] == "open" and state["serving"] == "stale"

        await eventually(breaker_open, timeout_s=15)
        assert await metric(client, "signalops_breaker_state", dependency="source:plant_api") == 2
        # Then it hangs: each half-open probe times out and the breaker opens again.
        api.mode = "hang"

        async def stale_copies() -> bool:
            return sum(s.stale for s in await valid.drain()) >= 4

        await eventually(stale_copies, timeout_s=15)
        stale = [s for s in valid.plant() if s.stale]
        assert {s.event_id for s in stale} == {s.event_id for s in first}
        assert all(s.snapshot_at is not None and s.snapshot_at >= now for s in stale)
        assert all(s.fields == f.fields for s in stale for f in first if f.event_id == s.event_id)
        # Downstream: features applies the fresh records once, skips the stale copies and
        # marks the source stale in Redis, where serve reads it (reason stale_source:...).
        assert await downstream.apply(first) == {}
        marked = await downstream.apply(stale)
        snapshot_at = max(s.snapshot_at for s in stale if s.snapshot_at is not None)
        assert marked == {"plant_api": snapshot_at.timestamp()}
        age = await metric(
            client, "signalops_ingest_stale_snapshot_age_seconds", source="plant_api"
        )
        assert age is not None and age > 0

        # 3. Beyond max_stale_s nothing is emitted and the alert gauge is set.
        async def expired() -> bool:
            return (await source_state(client))["serving"] == "expired"

        await eventually(expired, timeout_s=MAX_STALE_S + 15)
        gauge = await metric(client, "signalops_ingest_polled_source_expired", source="plant_api")
        assert gauge == 1
        await valid.drain()
        emitted = len(valid.plant())
        failed = await metric(
            client, "signalops_ingest_polls_total", source="plant_api", outcome="failed"
        )
        assert failed is not None

        async def three_more_failed_polls() -> bool:
            now_failed = await metric(
                client, "signalops_ingest_polls_total", source="plant_api", outcome="failed"
            )
            return now_failed is not None and now_failed >= failed + 3

        await eventually(three_more_failed_polls, timeout_s=30)
        assert len(await valid.drain()) == emitted, "an expired snapshot was re-emitted"
        assert (await source_state(client))["serving"] == "expired"

        # 4. The source recovers with new readings: the half-open probe closes the
        # breaker, the gauges clear, and the new records flow unflagged.
        later = utcnow()
        api.readings = [reading("dev-1", later, 30.0), reading("dev-3", later, 31.0)]
        api.mode = "ok"
        api.release.set()  # a probe still hanging answers now

        async def recovered() -> bool:
            state = await source_state(client)
            return state["breaker"] == "closed" and state["serving"] == "fresh"

        await eventually(recovered, timeout_s=30)

        async def new_readings() -> bool:
            return sum(s.event_time == later for s in await valid.drain()) >= 2

        await eventually(new_readings, timeout_s=15)
        fresh = [s for s in valid.plant() if s.event_time == later]
        assert {s.entity_id for s in fresh} == {"dev-1", "dev-3"}
        assert not any(s.stale for s in fresh)
        assert await downstream.apply(fresh) == {}, "serve still sees the source stale"
        assert await metric(client, "signalops_breaker_state", dependency="source:plant_api") == 0
        gauge = await metric(client, "signalops_ingest_polled_source_expired", source="plant_api")
        assert gauge == 0

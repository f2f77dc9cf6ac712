"""The HTTP contract over ASGI with a fake broker: statuses, answers, sources, probes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaTimeoutError
from fastapi import FastAPI

from libs.common.clients.kafka import KafkaRuntime, MemoryPublisher
from libs.common.definitions import Definitions
from libs.common.schemas import DeadLetter, Signal
from libs.common.settings import Topics
from services.ingest.adapters.http import create_app
from services.ingest.core.dedup import MemoryDedupWindow
from services.ingest.handlers import IngestHandler
from services.ingest.main import build_app
from services.ingest.settings import IngestSettings

Record = dict[str, Any]


@pytest.fixture(name="settings")
def _settings() -> IngestSettings:
    return IngestSettings(max_batch=3, max_body_bytes=4096)


@pytest.fixture(name="app")
def _app(
    settings: IngestSettings,
    publisher: MemoryPublisher,
    definitions: Definitions,
    now: datetime,
) -> FastAPI:
    """build_app with the fake broker and the clock pinned to `now`."""
    return build_app(settings, publisher=publisher, definitions=definitions, clock=lambda: now)


@pytest.fixture(name="client")
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


async def test_one_signal_is_accepted_with_202(
    client: httpx.AsyncClient,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """A single valid signal answers 202 with its event id, after it was published."""
    response = await client.post("/v1/signals", json=make_signal(event_id="e-1"))
    assert response.status_code == 202
    assert response.json() == {
        "accepted": [{"index": 0, "event_id": "e-1"}],
        "rejected": [],
        "duplicates": [],
    }
    ((key, value),) = publisher.sent[topics.valid]
    assert (key, Signal.from_bytes(value).event_id) == ("device-1", "e-1")


async def test_mixed_batch_answers_207(
    client: httpx.AsyncClient,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """A batch with valid and invalid records answers 207 with per-record verdicts."""
    batch = {"signals": [make_signal(), make_signal(fields={"temperature": 999, "status": "ok"})]}
    response = await client.post("/v1/signals", json=batch)
    assert response.status_code == 207
    body = response.json()
    assert [a["index"] for a in body["accepted"]] == [0]
    ((rejected,),) = [body["rejected"]]
    assert (rejected["index"], rejected["reason"]) == (1, "out_of_range")
    assert "above its maximum 150" in rejected["detail"]
    assert len(publisher.sent[topics.valid]) == len(publisher.sent[topics.dlq]) == 1


async def test_a_retried_record_beside_a_rejected_one_answers_207(
    settings: IngestSettings,
    publisher: MemoryPublisher,
    definitions: Definitions,
    now: datetime,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """A duplicate was taken before: with a rejection beside it the batch is mixed (207),
    not all rejected (422), so a client retrying a partly bad batch is not told to drop
    its good record."""
    app = build_app(
        settings,
        publisher=publisher,
        definitions=definitions,
        clock=lambda: now,
        dedup=MemoryDedupWindow(),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        good = make_signal(event_id="e-dup")
        assert (await client.post("/v1/signals", json=good)).status_code == 202
        response = await client.post("/v1/signals", json=[good, make_signal(source="nope")])
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == ([], [{"index": 0, "event_id": "e-dup"}])
    assert [r["reason"] for r in body["rejected"]] == ["unknown_source"]
    assert len(publisher.sent[topics.valid]) == 1


async def test_all_rejected_answers_422(
    client: httpx.AsyncClient,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """A batch where every record is invalid answers 422; each is dead-lettered."""
    response = await client.post("/v1/signals", json=[make_signal(source="nope"), {}])
    assert response.status_code == 422
    assert [r["reason"] for r in response.json()["rejected"]] == [
        "unknown_source",
        "invalid_envelope",
    ]
    assert response.json()["accepted"] == []
    assert len(publisher.sent[topics.dlq]) == 2
    assert publisher.sent[topics.valid] == []


async def test_body_that_is_not_json_answers_400_and_is_dead_lettered(
    client: httpx.AsyncClient, publisher: MemoryPublisher, topics: Topics
) -> None:
    """A non-JSON body answers 400 invalid_json; the whole body goes to the DLQ."""
    body = b'{"source": "sensors", oops'
    response = await client.post("/v1/signals", content=body)
    assert response.status_code == 400
    (rejected,) = response.json()["rejected"]
    assert rejected["reason"] == "invalid_json"
    assert "line 1 column 23" in rejected["detail"]
    ((key, value),) = publisher.sent[topics.dlq]
    assert (key, DeadLetter.from_bytes(value).original) == ("http", body)


@pytest.mark.parametrize(
    "body",
    [json.dumps([{}] * 4).encode(), b'{"signals": [1, 2, 3, 4]}', b"[" + b" " * 5000 + b"]"],
    ids=["array_over_max_batch", "wrapper_over_max_batch", "body_over_max_bytes"],
)
async def test_oversized_batches_answer_413_and_publish_nothing(
    client: httpx.AsyncClient, publisher: MemoryPublisher, body: bytes
) -> None:
    """More records than max_batch, or more bytes than max_body_bytes, answers 413."""
    response = await client.post("/v1/signals", content=body)
    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"
    assert "split the batch" in response.json()["detail"]
    assert publisher.sent == {}


async def test_outcomes_endpoint(
    client: httpx.AsyncClient,
    publisher: MemoryPublisher,
    topics: Topics,
    make_outcome: Callable[..., Record],
) -> None:
    """Outcomes answer like signals: 202 when valid, 422 for an unknown model, 400 if not JSON."""
    ok = await client.post("/v1/outcomes", json={"outcomes": [make_outcome()]})
    unknown = await client.post("/v1/outcomes", json=make_outcome(model="churn"))
    garbage = await client.post("/v1/outcomes", content=b"label=1")
    assert (ok.status_code, unknown.status_code, garbage.status_code) == (202, 422, 400)
    assert unknown.json()["rejected"][0]["reason"] == "unknown_model"
    assert len(publisher.sent[topics.outcomes]) == 1
    assert [k for k, _ in publisher.sent[topics.dlq]] == ["outcomes", "outcomes"]


async def test_sources_lists_versions_and_field_schemas(client: httpx.AsyncClient) -> None:
    """GET /v1/sources shows each source's version and its field schema."""
    response = await client.get("/v1/sources")
    assert response.status_code == 200
    sources = {s["name"]: s for s in response.json()["sources"]}
    assert set(sources) == {"sensors", "payments"}
    assert sources["payments"]["version"] == 2
    assert sources["sensors"]["fields"]["status"] == {
        "type": "str",
        "required": True,
        "min": None,
        "max": None,
        "allowed": ["ok", "warn", "error"],
    }
    assert sources["sensors"]["allowed_lateness_s"] == 3600


async def test_health_readiness_and_metrics(
    client: httpx.AsyncClient, make_signal: Callable[..., Record]
) -> None:
    """/healthz is alive, /readyz ready (fake broker), /metrics counts ingest's messages."""
    await client.post("/v1/signals", json=[make_signal(), make_signal(source="nope")])
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    assert (await client.get("/readyz")).status_code == 200
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'signalops_messages_total{outcome="accepted",service="ingest",topic="http"}' in (
        metrics.text
    )
    assert 'signalops_dead_letters_total{reason="unknown_source",service="ingest"}' in (
        metrics.text
    )


async def test_readyz_answers_503_with_the_reason(
    settings: IngestSettings, handler: IngestHandler, definitions: Definitions
) -> None:
    """/readyz answers 503 and the reason while the Kafka producer is not started."""
    kafka = KafkaRuntime(settings, client_id="ingest")
    app = create_app(handler, settings, definitions, readiness=kafka.ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "reason": "kafka producer not started"}


async def test_broker_failure_answers_503(
    settings: IngestSettings, definitions: Definitions, make_signal: Callable[..., Record]
) -> None:
    """When the broker does not acknowledge, the answer is 503, never a false 202."""

    class DownPublisher(MemoryPublisher):
        async def publish_many(self, items: Any) -> None:
            raise KafkaTimeoutError()

    app = build_app(settings, publisher=DownPublisher(), definitions=definitions)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        response = await c.post("/v1/signals", json=make_signal())
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    assert response.headers["retry-after"] == "1"

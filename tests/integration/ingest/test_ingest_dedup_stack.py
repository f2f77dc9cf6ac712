"""Idempotency on the real broker and Redis: duplicates within the window are dropped
and counted (a retry with its time written differently included), every record is
accounted for in /metrics, and a paused Redis loses nothing (fail open)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.common.clients.kafka.reader import read_to_end
from libs.common.schemas import Signal
from libs.common.testing import paused as paused_pid
from tests.conftest import Server
from tests.integration.ingest.ingest_server import MakeIngestSettings, eventually, serving_client

pytestmark = pytest.mark.integration


def sensor(entity_id: str, at: str, temperature: float = 20.5) -> dict[str, Any]:
    return {
        "source": "sensors",
        "entity_id": entity_id,
        "event_time": at,
        "fields": {"temperature": temperature, "vibration": 1.0, "status": "ok"},
    }


async def samples(http: httpx.AsyncClient, name: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric on /metrics, by their label values."""
    text = (await http.get("/metrics")).text
    return {
        tuple(s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def accounting(http: httpx.AsyncClient, input_label: str) -> dict[str, float]:
    """received and each outcome of one input, from /metrics."""
    received = await samples(http, "signalops_ingest_received_total")
    outcomes = await samples(http, "signalops_ingest_records_total")
    found = {o: v for (i, o), v in ((k[:2], v) for k, v in outcomes.items()) if i == input_label}
    return {"received": received.get((input_label,), 0.0), **found}


async def test_duplicates_within_the_window_are_dropped_and_counted(
    make_ingest_settings: MakeIngestSettings, kafka_bootstrap: str, unique: str
) -> None:
    """A mixed batch, then the client's retry of it with every time written another way
    ("+01:00", ".000000Z"): each valid record is on signals.valid once, the retry is
    answered as duplicates (not rejections), and received = accepted + dead-lettered +
    duplicate on /metrics."""
    settings = await make_ingest_settings()
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    z = at.isoformat().replace("+00:00", "Z")
    plus_one = at.astimezone(timezone(timedelta(hours=1))).isoformat()
    fraction = at.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    batch = [
        sensor(f"dev-{unique}-1", z),
        sensor(f"dev-{unique}-2", z),
        sensor(f"dev-{unique}-1", z),  # the same record twice in one batch
        {**sensor(f"dev-{unique}-3", z), "event_id": f"given-{unique}"},
        sensor(f"dev-{unique}-4", z, temperature=999.0),  # out of range: dead letter
        {"source": "sensors"},  # missing fields: dead letter
    ]
    retry = [
        sensor(f"dev-{unique}-1", plus_one),
        sensor(f"dev-{unique}-2", fraction),
        {**sensor(f"dev-{unique}-3", plus_one), "event_id": f"given-{unique}"},
    ]
    async with serving_client(settings) as http:
        before = await accounting(http, "http")
        first = (await http.post("/v1/signals", json=batch)).json()
        assert [a["index"] for a in first["accepted"]] == [0, 1, 3]
        assert [d["index"] for d in first["duplicates"]] == [2]
        assert [r["index"] for r in first["rejected"]] == [4, 5]

        r = await http.post("/v1/signals", json=retry)
        assert r.status_code == 202, r.text  # duplicates are not rejections
        second = r.json()
        assert second["accepted"] == [] and second["rejected"] == []
        assert [d["event_id"] for d in second["duplicates"]] == [
            a["event_id"] for a in first["accepted"]
        ]
        after = await accounting(http, "http")

    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    assert delta == {"received": 9, "accepted": 3, "dead_lettered": 2, "duplicate": 4}
    assert after["received"] == after["accepted"] + after["dead_lettered"] + after["duplicate"]
    valid = await read_to_end(kafka_bootstrap, settings.topics.valid, within_s=60)
    ids = sorted(Signal.from_bytes(d.value).event_id for d in valid)
    assert ids == sorted(a["event_id"] for a in first["accepted"])


async def test_a_paused_redis_loses_nothing_and_dedup_resumes(
    make_ingest_settings: MakeIngestSettings,
    kafka_bootstrap: str,
    redis_server: Server,
    unique: str,
) -> None:
    """With Redis stopped (SIGSTOP) every batch is still accepted (202, unchecked and
    counted), all records reach signals.valid; once Redis is back duplicates are
    dropped again."""
    settings = await make_ingest_settings()  # on redis_server
    at = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
    batches = [[sensor(f"p-{unique}-{b}-{i}", at) for i in range(50)] for b in range(8)]
    async with serving_client(settings) as http:
        unchecked_before = (await samples(http, "signalops_ingest_dedup_total")).get(
            ("unchecked",), 0.0
        )
        with paused_pid(redis_server.pid):
            for body in batches:
                r = await http.post("/v1/signals", json=body)
                assert r.status_code == 202, r.text
                assert len(r.json()["accepted"]) == 50
            unchecked = (await samples(http, "signalops_ingest_dedup_total"))[("unchecked",)]
            assert unchecked - unchecked_before == 400

        # Back: the breaker half-opens and a resent batch is a duplicate again.
        fresh = [sensor(f"q-{unique}-{i}", at) for i in range(5)]
        assert len((await http.post("/v1/signals", json=fresh)).json()["accepted"]) <= 5

        async def deduplicating() -> bool:
            answer = (await http.post("/v1/signals", json=fresh)).json()
            return len(answer["duplicates"]) == 5

        await eventually(deduplicating, timeout_s=30)

    valid = await read_to_end(kafka_bootstrap, settings.topics.valid, within_s=60)
    entities = [Signal.from_bytes(d.value).entity_id for d in valid]
    paused = [e for e in entities if e.startswith(f"p-{unique}-")]
    assert sorted(paused) == sorted(r["entity_id"] for b in batches for r in b)

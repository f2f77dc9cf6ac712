"""Schema drift and late data on the real broker and Redis: a breaking change is
quarantined and replays once the definitions declare it, an additive one passes with
one schema event, late records follow their source's policy (issue 9)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from infra.dlq import LetterQuery, replay_pages
from libs.common.schemas import DeadLetter, SchemaDriftDetected, Signal
from libs.common.settings import Settings
from services.ingest.settings import IngestSettings, package_version
from tests.integration.ingest.ingest_server import (
    ADMIN_TOKEN,
    MakeIngestSettings,
    eventually,
    read_values,
    serving,
    serving_client,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def definitions_file(path: Path, **sensors: Any) -> Path:
    """The repository's signalops.yaml with the `sensors` source's keys overridden."""
    spec = yaml.safe_load((REPO / "signalops.yaml").read_text())
    source = next(s for s in spec["sources"] if s["name"] == "sensors")
    source.update(sensors)
    path.write_text(yaml.safe_dump(spec))
    return path


def sensor(entity_id: str, at: datetime, version: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "source": "sensors",
        "entity_id": entity_id,
        "schema_version": version,
        "event_time": at.isoformat().replace("+00:00", "Z"),
        "fields": {"temperature": 20.5, "vibration": 1.0, "pressure": 3.0, "status": "ok"} | fields,
    }


async def schema_events(settings: IngestSettings) -> list[SchemaDriftDetected]:
    return [
        SchemaDriftDetected.from_bytes(v)
        for v in await read_values(settings, settings.topics.schema_events)
    ]


async def test_breaking_change_is_quarantined_and_replays_after_the_fix(
    make_ingest_settings: MakeIngestSettings,
    tmp_path: Path,
) -> None:
    """Version-2 records (a new required field) sent before the definitions know it are
    dead-lettered schema_breaking with one breaking schema event; once sensors is
    declared at version 2 and ingest restarted, replay brings each one to signals.valid."""
    v1 = definitions_file(tmp_path / "v1.yaml")
    settings = await make_ingest_settings(definitions=v1)
    now = datetime.now(UTC)
    records = [sensor(f"d-{i}", now, version=2, humidity=40.0 + i) for i in range(3)]

    # 1. The sender upgrades before the definitions do: quarantined, reported once.
    async with serving(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post("/v1/signals", json=records)
            assert r.status_code == 422, r.text
            assert {x["reason"] for x in r.json()["rejected"]} == {"schema_breaking"}
            sources = (await http.get("/v1/sources")).json()["sources"]
    drift = next(s for s in sources if s["name"] == "sensors")["observed"]["drift"]
    assert drift["counts"] == {"new_version": 3}
    letters = [DeadLetter.from_bytes(v) for v in await read_values(settings, settings.topics.dlq)]
    assert sorted((d.reason, d.source) for d in letters) == [("schema_breaking", "sensors")] * 3
    events = await schema_events(settings)
    assert [(e.kind, e.field, e.observed, e.breaking, e.count) for e in events] == [
        ("new_version", "schema_version", "2", True, 3)
    ]
    assert await read_values(settings, settings.topics.valid) == []

    # 2. The definitions declare version 2 with the new field; ingest restarts on them.
    v2 = definitions_file(
        tmp_path / "v2.yaml",
        version=2,
        fields={
            **yaml.safe_load((REPO / "signalops.yaml").read_text())["sources"][0]["fields"],
            "humidity": {"type": "float", "min": 0, "max": 100},
        },
    )
    fixed = settings.model_copy(update={"definitions": v2})
    operator = Settings(ingest_port=fixed.ingest_port, admin_token=ADMIN_TOKEN)
    async with serving(fixed):
        # 3. Replay the quarantined letters: through signals.raw into signals.valid.
        def replay() -> list[dict[str, Any]]:
            query = LetterQuery(reason="schema_breaking")
            return [
                line for page in replay_pages(operator, query, None) for line in page["results"]
            ]

        lines = await asyncio.to_thread(replay)
        assert [line["outcome"] for line in lines] == ["replayed"] * 3

        async def all_valid() -> bool:
            return len(await read_values(fixed, fixed.topics.valid)) >= 3

        await eventually(all_valid, timeout_s=60)

    valid = [Signal.from_bytes(v) for v in await read_values(fixed, fixed.topics.valid)]
    assert sorted((s.entity_id, s.schema_version, s.fields["humidity"]) for s in valid) == [
        ("d-0", 2, 40.0),
        ("d-1", 2, 41.0),
        ("d-2", 2, 42.0),
    ]
    assert {s.ingest_version for s in valid} == {package_version()}
    # Nothing was quarantined again.
    letters = [DeadLetter.from_bytes(v) for v in await read_values(fixed, fixed.topics.dlq)]
    assert len(letters) == 3


async def test_additive_change_passes_with_one_schema_event(
    make_ingest_settings: MakeIngestSettings,
    tmp_path: Path,
) -> None:
    """Fifty records with an undeclared field over three requests are all accepted
    without it, and the change is reported by exactly one schema event."""
    settings = await make_ingest_settings(
        definitions=definitions_file(tmp_path / "v1.yaml"),
        build_version="test-build-7",
    )
    now = datetime.now(UTC)
    records = [sensor(f"a-{i}", now, humidity=float(i)) for i in range(50)]
    async with serving_client(settings) as http:
        for part in (records[:10], records[10:30], records[30:]):
            r = await http.post("/v1/signals", json=part)
            assert r.status_code == 202, r.text
    valid = [Signal.from_bytes(v) for v in await read_values(settings, settings.topics.valid)]
    assert sorted(s.entity_id for s in valid) == sorted(r["entity_id"] for r in records)
    assert all("humidity" not in s.fields for s in valid)
    assert {s.ingest_version for s in valid} == {"test-build-7"}
    events = await schema_events(settings)
    assert [(e.source, e.kind, e.field, e.breaking, e.count) for e in events] == [
        ("sensors", "unknown_field", "humidity", False, 10)
    ]
    assert await read_values(settings, settings.topics.dlq) == []


def _late_count(policy: str) -> float:
    value = REGISTRY.get_sample_value(
        "signalops_ingest_late_records_total", {"source": "sensors", "policy": policy}
    )
    return value or 0.0


@pytest.mark.parametrize("policy", ["accept_flagged", "dead_letter"])
async def test_late_records_are_routed_by_the_source_policy(
    policy: str,
    make_ingest_settings: MakeIngestSettings,
    tmp_path: Path,
) -> None:
    """A record older than allowed_lateness_s is published with late=true under
    accept_flagged, dead-lettered too_late under dead_letter; counted either way, and a
    timely record is published unflagged."""
    settings = await make_ingest_settings(
        definitions=definitions_file(tmp_path / "late.yaml", late_policy=policy),
    )
    now = datetime.now(UTC)
    before = _late_count(policy)
    records = [sensor("late-1", now - timedelta(hours=2)), sensor("fresh-1", now)]
    async with serving_client(settings) as http:
        r = await http.post("/v1/signals", json=records)
        assert r.status_code == (202 if policy == "accept_flagged" else 207), r.text
    valid = {
        s.entity_id: s.late
        for s in map(Signal.from_bytes, await read_values(settings, settings.topics.valid))
    }
    letters = [DeadLetter.from_bytes(v) for v in await read_values(settings, settings.topics.dlq)]
    if policy == "accept_flagged":
        assert valid == {"late-1": True, "fresh-1": False} and letters == []
    else:
        assert valid == {"fresh-1": False}
        assert [(d.reason, d.source) for d in letters] == [("too_late", "sensors")]
    assert _late_count(policy) == before + 1

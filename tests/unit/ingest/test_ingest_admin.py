"""Ingest's dead-letter replay endpoint with a fake broker: what goes where, who may."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from libs.common.clients.kafka import MemoryPublisher
from libs.common.clients.kafka.dead_letters import dead_letter
from libs.common.definitions import Definitions
from libs.common.schemas import DeadLetter
from libs.common.settings import Topics
from services.ingest.main import build_app
from services.ingest.settings import IngestSettings

OPS_KEY = "ops-key-0123456789abcdef"
APP_KEY = "app-key-0123456789abcdef"
KEYS = {"ops": {"key": OPS_KEY, "scopes": ["admin"]}, "app": {"key": APP_KEY}}


def letter(original: bytes, *, source: str, reason: str, key: str | None = None) -> bytes:
    return dead_letter(
        original, stage="ingest", source=source, reason=reason, origin=reason, key=key
    ).to_bytes()


async def replay(
    publisher: MemoryPublisher,
    definitions: Definitions,
    now: datetime,
    letters: list[bytes],
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async def read() -> list[bytes]:
        return letters

    app = build_app(
        IngestSettings(api_keys=KEYS),
        publisher=publisher,
        definitions=definitions,
        clock=lambda: now,
        read_letters=read,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        return await client.post(
            "/v1/admin/dlq/replay", json=body, headers={"X-API-Key": OPS_KEY} | (headers or {})
        )


async def test_replay_sends_signals_raw_and_outcomes_through_validation(
    publisher: MemoryPublisher,
    definitions: Definitions,
    now: datetime,
    topics: Topics,
    make_signal: Callable[..., dict[str, Any]],
    make_outcome: Callable[..., dict[str, Any]],
) -> None:
    """Signals go back to the raw topic byte for byte with their key; a valid outcome is
    published to outcomes; an outcome still invalid is reported failed and dead-lettered
    again."""
    signal = json.dumps(make_signal()).encode()
    good = json.dumps(make_outcome()).encode()
    bad = json.dumps(make_outcome(model="nope")).encode()
    letters = [
        letter(signal, source="sensors", reason="broker_down", key="device-1"),
        letter(good, source="outcomes", reason="broker_down"),
        letter(bad, source="outcomes", reason="unknown_model"),
    ]
    r = await replay(publisher, definitions, now, letters, {})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["dead_letters"], report["chosen"], report["replayed"]) == (3, 3, 2)
    assert report["target"] == topics.raw
    assert len(report["failed"]) == 1 and "rejected again" in report["failed"][0]
    assert publisher.sent[topics.raw] == [("device-1", signal)]
    assert len(publisher.messages[topics.outcomes]) == 1
    again = [DeadLetter.from_bytes(v) for _, v in publisher.sent[topics.dlq]]
    assert [d.original for d in again] == [bad]


async def test_replay_filters_by_reason_and_can_target_another_topic(
    publisher: MemoryPublisher,
    definitions: Definitions,
    now: datetime,
    make_outcome: Callable[..., dict[str, Any]],
) -> None:
    """--reason picks letters; --to sends every chosen letter raw, outcomes included."""
    outcome = json.dumps(make_outcome()).encode()
    letters = [
        letter(outcome, source="outcomes", reason="a"),
        letter(b"{}", source="sensors", reason="b"),
    ]
    r = await replay(publisher, definitions, now, letters, {"reason": "a", "to": "elsewhere"})
    assert r.json()["replayed"] == 1 and r.json()["chosen"] == 1
    assert publisher.sent["elsewhere"] == [(None, outcome)]


async def test_replay_needs_the_admin_scope(
    publisher: MemoryPublisher, definitions: Definitions, now: datetime
) -> None:
    """401 without a key or with an unknown one, 403 with a predict-only key; nothing sent."""
    letters = [letter(b"{}", source="sensors", reason="x")]
    for headers, status in (
        ({"X-API-Key": ""}, 401),
        ({"X-API-Key": "unknown-key-000000000"}, 401),
        ({"X-API-Key": APP_KEY}, 403),
    ):
        r = await replay(publisher, definitions, now, letters, {}, headers)
        assert r.status_code == status, r.text
        assert r.json()["message"]
    assert not publisher.sent

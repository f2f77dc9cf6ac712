"""Ingest's dead-letter admin endpoints with a fake broker and ledger: what goes where,
page by page, at most once, and who may."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from libs.common.clients.kafka import MemoryPublisher
from libs.common.clients.kafka.dead_letters import dead_letter
from libs.common.clients.kafka.pages import Cursor, Page
from libs.common.definitions import Definitions
from libs.common.schemas import DeadLetter
from libs.common.settings import Topics
from services.ingest.core.dedup import MemoryDedupWindow
from services.ingest.dedup import MemoryReplayLedger
from services.ingest.main import build_app
from services.ingest.settings import IngestSettings

OPS_KEY = "ops-key-0123456789abcdef"
APP_KEY = "app-key-0123456789abcdef"
KEYS = {"ops": {"key": OPS_KEY, "scopes": ["admin"]}, "app": {"key": APP_KEY}}


def letter(original: bytes, *, source: str, reason: str, key: str | None = None) -> bytes:
    return dead_letter(
        original,
        stage="ingest",
        source=source,
        reason=reason,
        origin=original.hex() + reason,
        key=key,
    ).to_bytes()


def one_partition(letters: list[bytes]) -> Callable[[Cursor | None, int], Any]:
    """A fake signals.dlq of one partition holding `letters`, paged like the real one."""

    async def page(cursor: Cursor | None, size: int) -> Page:
        start = cursor.positions[0][0] if cursor else 0
        records = [(0, o, letters[o]) for o in range(start, min(start + size, len(letters)))]
        after = Cursor({0: (start + len(records), len(letters))})
        return Page(records, after if after.remaining else None, after.remaining)

    return page


class Admin:
    """build_app over the fakes, with one ledger across calls (as Redis would be)."""

    def __init__(self, publisher: MemoryPublisher, definitions: Definitions, now: datetime):
        self.publisher, self.definitions, self.now = publisher, definitions, now
        self.ledger = MemoryReplayLedger()

    async def call(
        self,
        method: str,
        letters: list[bytes],
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        app = build_app(
            IngestSettings(api_keys=KEYS),
            publisher=self.publisher,
            definitions=self.definitions,
            clock=lambda: self.now,
            read_page=one_partition(letters),
            dedup=MemoryDedupWindow(),
            ledger=self.ledger,
        )
        transport = httpx.ASGITransport(app=app)
        auth = {"X-API-Key": OPS_KEY} | (headers or {})
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            if method == "GET":
                params = {k: v for k, v in body.items() if v is not None}
                return await client.get("/v1/admin/dlq", params=params, headers=auth)
            return await client.post("/v1/admin/dlq/replay", json=body, headers=auth)


@pytest.fixture(name="admin")
def _admin(publisher: MemoryPublisher, definitions: Definitions, now: datetime) -> Admin:
    return Admin(publisher, definitions, now)


async def test_replay_sends_signals_raw_and_outcomes_through_validation(
    admin: Admin,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., dict[str, Any]],
    make_outcome: Callable[..., dict[str, Any]],
) -> None:
    """Signals go back to the raw topic byte for byte with their key; a valid outcome is
    accepted; an outcome still invalid is reported rejected with its reason and
    dead-lettered again."""
    signal = json.dumps(make_signal()).encode()
    good = json.dumps(make_outcome()).encode()
    bad = json.dumps(make_outcome(model="nope")).encode()
    letters = [
        letter(signal, source="sensors", reason="broker_down", key="device-1"),
        letter(good, source="outcomes", reason="broker_down"),
        letter(bad, source="outcomes", reason="unknown_model"),
    ]
    r = await admin.call("POST", letters, {})
    assert r.status_code == 200, r.text
    report = r.json()
    assert [x["outcome"] for x in report["results"]] == ["replayed", "accepted", "rejected"]
    assert "unknown_model" in report["results"][2]["detail"]
    assert report["counts"] == {"replayed": 1, "accepted": 1, "rejected": 1}
    assert report["target"] == topics.raw and report["cursor"] is None
    assert publisher.sent[topics.raw] == [("device-1", signal)]
    assert len(publisher.messages[topics.outcomes]) == 1
    again = [DeadLetter.from_bytes(v) for _, v in publisher.sent[topics.dlq]]
    assert [d.original for d in again] == [bad]


async def test_replay_never_replays_a_letter_twice(
    admin: Admin, publisher: MemoryPublisher, topics: Topics, make_signal: Callable[..., Any]
) -> None:
    """A second replay skips what the first replayed; a letter written twice to the topic
    is replayed once; an outcome rejected again stays replayable."""
    signals = [json.dumps(make_signal(entity_id=f"d-{i}")).encode() for i in range(3)]
    letters = [letter(s, source="sensors", reason="x") for s in signals]
    first = (await admin.call("POST", [*letters, letters[0]], {})).json()
    assert [x["outcome"] for x in first["results"]] == ["replayed"] * 3 + ["skipped"]
    second = (await admin.call("POST", letters, {})).json()
    assert second["counts"] == {"skipped": 3}
    assert [v for _, v in publisher.sent[topics.raw]] == signals


async def test_replay_and_list_page_through_every_letter_with_filters(
    admin: Admin, publisher: MemoryPublisher, topics: Topics
) -> None:
    """Following the cursor sees every letter; reason and source filters pick letters."""
    letters = [
        letter(f'{{"n": {i}}}'.encode(), source="a" if i % 2 else "b", reason=f"r{i % 3}")
        for i in range(25)
    ]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await admin.call("GET", letters, {"page_size": 7, "cursor": cursor, "source": "a"})
        assert r.status_code == 200, r.text
        seen.extend(r.json()["letters"])
        cursor = r.json()["cursor"]
        if cursor is None:
            break
    assert [x["offset"] for x in seen] == [i for i in range(25) if i % 2]
    replayed = 0
    cursor = None
    while True:
        body = {"page_size": 10, "cursor": cursor, "reason": "r1", "to": "elsewhere"}
        page = (await admin.call("POST", letters, body)).json()
        replayed += page["counts"].get("replayed", 0)
        cursor = page["cursor"]
        if cursor is None:
            break
    assert replayed == len([i for i in range(25) if i % 3 == 1])
    assert len(publisher.sent["elsewhere"]) == replayed


async def test_a_cursor_ingest_did_not_write_is_a_400(admin: Admin) -> None:
    """A forged cursor is refused with a message saying to list again."""
    r = await admin.call("GET", [], {"cursor": "not-a-cursor"})
    assert r.status_code == 400
    assert "list again" in r.json()["message"]


async def test_replay_needs_the_admin_scope(admin: Admin, publisher: MemoryPublisher) -> None:
    """401 without a key or with an unknown one, 403 with a predict-only key; nothing sent."""
    letters = [letter(b"{}", source="sensors", reason="x")]
    for headers, status in (
        ({"X-API-Key": ""}, 401),
        ({"X-API-Key": "unknown-key-000000000"}, 401),
        ({"X-API-Key": APP_KEY}, 403),
    ):
        for method in ("GET", "POST"):
            r = await admin.call(method, letters, {}, headers)
            assert r.status_code == status, r.text
            assert r.json()["message"]
    assert not publisher.sent


async def test_replay_of_a_later_stage_letter_is_judged_again_not_deduplicated(
    publisher: MemoryPublisher,
    definitions: Definitions,
    now: datetime,
    topics: Topics,
    make_signal: Callable[..., dict[str, Any]],
) -> None:
    """A signal ingest accepted and features dead-lettered is forgotten by the dedup
    window when replayed, so ingest judges it again instead of dropping a duplicate."""
    window = MemoryDedupWindow()
    letters: list[bytes] = []
    app = build_app(
        IngestSettings(api_keys=KEYS),
        publisher=publisher,
        definitions=definitions,
        clock=lambda: now,
        read_page=one_partition(letters),
        dedup=window,
        ledger=MemoryReplayLedger(),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        assert (await client.post("/v1/signals", json=make_signal())).status_code == 202
        assert len(window.keys) == 1
        ((_, valid),) = publisher.sent[topics.valid]
        letters.append(
            dead_letter(
                valid, stage="features", source="sensors", reason="type_mismatch", origin="p0"
            ).to_bytes()
        )
        r = await client.post("/v1/admin/dlq/replay", json={}, headers={"X-API-Key": OPS_KEY})
    assert r.json()["counts"] == {"replayed": 1}
    assert publisher.sent[topics.raw] == [(None, valid)]
    assert window.keys == set()

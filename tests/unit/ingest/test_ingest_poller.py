"""The poller of one source against an in-process HTTP transport, a fake broker and a
fake snapshot store: fresh records, refused bodies, the stale fallback and its expiry."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import Definitions, parse_definitions
from libs.common.resilience import Policy
from libs.common.schemas import DeadLetter, Signal
from libs.common.settings import Topics
from services.ingest.handlers import IngestHandler
from services.ingest.sources import MemorySnapshotStore, PolledSource

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
MAX_STALE_S = 60.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(name="polled")
def _polled(definitions: Definitions) -> Definitions:
    """The unit definitions plus `meters`, polled with one attempt per poll."""
    data = definitions.model_dump(mode="json", exclude_none=True)
    data["sources"].append(
        {
            "name": "meters",
            "entity": "meter",
            "fields": {"kwh": {"type": "float", "min": 0}},
            "poll": {
                "url": "http://meters.test/readings",
                "attempts": 1,
                "fail_max": 5,
                "max_stale_s": MAX_STALE_S,
                "mapping": {"entity_id": "id", "event_time": "at", "fields": {"kwh": "kwh"}},
            },
        }
    )
    return parse_definitions(data)


Answer = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(name="make_poller")
def _make_poller(polled: Definitions, publisher: MemoryPublisher, unique: str) -> Any:
    """Factory: a PolledSource of `meters` whose HTTP answers come from `answer`."""

    def make(answer: Answer, clock: Clock, **overrides: Any) -> PolledSource:
        handler = IngestHandler(polled, publisher, Topics(), clock=clock)
        client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        source = polled.source("meters").model_copy(update={"name": "meters"})
        return PolledSource(
            source,
            handler,
            MemorySnapshotStore(),
            client,
            {},
            Policy(f"snapshots-{unique}", timeout_s=1.0),
            clock=clock,
            **overrides,
        )

    return make


def readings(clock: Clock, *ids: str) -> httpx.Response:
    at = (clock.now - timedelta(seconds=5)).isoformat()
    return httpx.Response(200, json=[{"id": i, "at": at, "kwh": 1.5} for i in ids])


def valid(publisher: MemoryPublisher) -> list[Signal]:
    return [Signal.from_bytes(v) for _, v in publisher.sent.get(Topics().valid, [])]


def expired_gauge() -> float | None:
    return REGISTRY.get_sample_value("signalops_ingest_polled_source_expired", {"source": "meters"})


def letters(publisher: MemoryPublisher) -> list[DeadLetter]:
    return [DeadLetter.from_bytes(v) for _, v in publisher.sent.get(Topics().dlq, [])]


async def test_refused_body_is_dead_lettered_and_the_snapshot_stands_in(
    make_poller: Any, publisher: MemoryPublisher
) -> None:
    """A body that is not JSON is dead-lettered whole under the source's name, and the
    last good snapshot is re-emitted flagged stale with its poll time."""
    clock = Clock()
    answers = [readings(clock, "m-1", "m-2"), httpx.Response(200, content=b"<html>")]
    poller = make_poller(lambda _: answers.pop(0), clock)

    assert await poller.poll_once() == "fresh"
    clock.now += timedelta(seconds=10)
    assert await poller.poll_once() == "stale"

    first, stale = valid(publisher)[:2], valid(publisher)[2:]
    assert [s.stale for s in first] == [False, False]
    assert [(s.stale, s.snapshot_at) for s in stale] == [(True, T0), (True, T0)]
    assert [s.event_id for s in stale] == [s.event_id for s in first]
    (letter,) = letters(publisher)
    assert (letter.source, letter.reason, letter.original) == ("meters", "invalid_json", b"<html>")
    assert poller.describe()["snapshot_age_s"] == 10.0


async def test_snapshot_older_than_max_stale_is_never_emitted(
    make_poller: Any, publisher: MemoryPublisher
) -> None:
    """Past max_stale_s a down source emits nothing and its expired gauge is 1; a good
    poll clears it."""
    clock = Clock()
    down = {"yes": False}

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(503) if down["yes"] else readings(clock, "m-1")

    poller = make_poller(answer, clock)
    await poller.poll_once()
    down["yes"] = True
    clock.now += timedelta(seconds=MAX_STALE_S + 1)
    assert await poller.poll_once() == "expired"
    assert len(valid(publisher)) == 1
    assert expired_gauge() == 1

    down["yes"] = False
    assert await poller.poll_once() == "fresh"
    assert expired_gauge() == 0


async def test_a_source_never_polled_successfully_has_nothing_to_serve(
    make_poller: Any, publisher: MemoryPublisher
) -> None:
    """With no snapshot at all, a failing source is expired at once: nothing invented."""
    poller = make_poller(lambda _: httpx.Response(401), Clock())
    assert await poller.poll_once() == "expired"
    assert valid(publisher) == [] and letters(publisher) == []


async def test_oversized_response_is_refused_with_its_head_dead_lettered(
    make_poller: Any, publisher: MemoryPublisher
) -> None:
    """A response over the size limit is not parsed: its first bytes are dead-lettered."""
    big = json.dumps([{"id": f"m-{i}", "at": "x", "kwh": 1} for i in range(500)]).encode()
    poller = make_poller(lambda _: httpx.Response(200, content=big), Clock(), max_body_bytes=1024)
    assert await poller.poll_once() == "expired"
    (letter,) = letters(publisher)
    assert letter.reason == "invalid_poll_response" and "exceeds 1024 bytes" in letter.detail
    assert letter.original == big[:1024]

"""Fuzz of the HTTP endpoints in process (fake broker): hostile bodies never crash ingest.

The bodies come from hostile_bodies.py. Every body ends as a 4xx with a message, or
each of its records accepted or dead-lettered with a reason; the received = accepted +
dead-lettered (+ duplicate) metrics hold. test_ingest_properties.py covers well-formed
JSON through the handler.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from prometheus_client import REGISTRY

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import Definitions
from libs.common.schemas import DeadLetter, Outcome, Signal
from libs.common.settings import Topics
from services.ingest.core import reasons
from services.ingest.main import build_app
from services.ingest.settings import IngestSettings
from tests.unit.ingest.hostile_bodies import (
    MAX_BATCH,
    MAX_RECORD,
    VALID_OUTCOME,
    VALID_SIGNAL,
    Body,
    bodies,
    mutants,
    outcomes,
    signals,
)

REASONS = {v for k, v in vars(reasons).items() if k.isupper()}
TOPICS = Topics()
MAX_BODY = 64 * 1024
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def accounted() -> dict[str, float]:
    """Totals of the received and per-outcome record counters, over every input."""
    totals: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.name in ("signalops_ingest_received", "signalops_ingest_records"):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = sample.labels.get("outcome", "received")
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def post(
    app_args: tuple[Definitions, datetime], path: str, body: bytes
) -> tuple[httpx.Response, MemoryPublisher]:
    """POST `body` to a fresh app on a private loop (hypothesis drives sync tests)."""
    definitions, now = app_args
    publisher = MemoryPublisher()
    app = build_app(
        IngestSettings(
            max_batch=MAX_BATCH,
            max_body_bytes=MAX_BODY,
            max_record_bytes=MAX_RECORD,
            dedup_enabled=False,  # no Redis in unit tests; duplicates are not the point here
        ),
        publisher=publisher,
        definitions=definitions,
        clock=lambda: now,
    )

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # an app exception fails the test
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            return await client.post(path, content=body)

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(go()), publisher
    finally:
        loop.close()


def assert_answered(
    path: str, body: Body, definitions: Definitions, now: datetime, valid_topic: str
) -> None:
    """One hostile body: a 4xx with a message, or every record accounted for once."""
    before = accounted()
    response, publisher = post((definitions, now), path, body.data)
    answer = response.json()
    after = accounted()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    sent_valid = publisher.sent.get(valid_topic, [])
    letters = [DeadLetter.from_bytes(v) for _, v in publisher.sent.get(TOPICS.dlq, [])]

    assert response.status_code in (202, 207, 400, 413, 422), answer
    if response.status_code == 413:  # refused whole: the client keeps its records
        assert answer["error"] == "batch_too_large" and "split the batch" in answer["detail"]
        assert publisher.sent == {} and delta.get("received", 0) == 0
        return
    accepted, rejected = answer["accepted"], answer["rejected"]
    if response.status_code == 400:  # not JSON: the body is one dead letter
        assert [r["reason"] for r in rejected] == ["invalid_json"] and accepted == []
        assert [d.original for d in letters] == [body.data]
    else:
        assert len(accepted) + len(rejected) == body.records
        assert {a["index"] for a in accepted} | {r["index"] for r in rejected} == set(
            range(body.records)
        )
    assert all(r["reason"] in REASONS and r["detail"] for r in rejected)
    assert [(d.reason, d.detail) for d in letters] == [(r["reason"], r["detail"]) for r in rejected]
    # What was published decodes back: no value that cannot be serialised got through.
    schema = Signal if valid_topic == TOPICS.valid else Outcome
    assert [schema.from_bytes(v).event_id for _, v in sent_valid] == [
        a["event_id"] for a in accepted
    ]
    if "received" in delta:  # the accounting metrics (issue 9): nothing dropped silently
        n = len(accepted) + len(rejected)
        assert delta["received"] == n
        assert (
            delta.get("accepted", 0) + delta.get("dead_lettered", 0) + delta.get("duplicate", 0)
            == n
        )


@FUZZ
@given(body=bodies(signals | mutants(VALID_SIGNAL), "signals"))
def test_hostile_signal_bodies_end_as_4xx_or_verdicts(
    body: Body, definitions: Definitions, now: datetime
) -> None:
    """POST /v1/signals with hostile bodies: never a crash, every record accounted for."""
    assert_answered("/v1/signals", body, definitions, now, TOPICS.valid)


@FUZZ
@given(body=bodies(outcomes | mutants(VALID_OUTCOME), "outcomes"))
def test_hostile_outcome_bodies_end_as_4xx_or_verdicts(
    body: Body, definitions: Definitions, now: datetime
) -> None:
    """POST /v1/outcomes with hostile bodies: never a crash, every record accounted for."""
    assert_answered("/v1/outcomes", body, definitions, now, TOPICS.outcomes)


def test_lone_surrogate_is_rejected_alone_and_pairs_pass(
    definitions: Definitions, now: datetime, make_signal: Callable[..., dict[str, Any]]
) -> None:
    """A record with a lone surrogate escape is dead-lettered alone as invalid_json (it
    cannot be encoded to UTF-8); its neighbour, with a valid surrogate pair, is accepted.
    """
    bad = json.dumps(make_signal(entity_id="\ud800"))  # json.dumps writes "\ud800"
    good = json.dumps(make_signal(entity_id="\U0001f600"))  # written as a pair
    response, publisher = post((definitions, now), "/v1/signals", f"[{bad},{good}]".encode())
    assert response.status_code == 207
    (rejected,) = response.json()["rejected"]
    assert (rejected["index"], rejected["reason"]) == (0, "invalid_json")
    assert "lone UTF-16 surrogate" in rejected["detail"]
    ((key, value),) = publisher.sent[TOPICS.valid]
    assert (key, Signal.from_bytes(value).entity_id) == ("\U0001f600", "\U0001f600")
    ((_, letter),) = publisher.sent[TOPICS.dlq]
    assert DeadLetter.from_bytes(letter).original == bad.encode()


def test_time_without_a_utc_form_is_an_invalid_envelope(
    definitions: Definitions, now: datetime, make_outcome: Callable[..., dict[str, Any]]
) -> None:
    """An outcome at year 1 with a positive offset (before year 1 in UTC) is rejected
    with a message, not a serialisation crash; the same instant written in UTC is taken.
    """
    body = [
        make_outcome(event_time="0001-01-01T00:00:00+01:00"),
        make_outcome(event_time="0001-01-01T00:00:00Z"),
    ]
    response, _ = post((definitions, now), "/v1/outcomes", json.dumps(body).encode())
    assert response.status_code == 207
    (rejected,) = response.json()["rejected"]
    assert rejected["reason"] == "invalid_envelope"
    assert "event_time" in rejected["detail"] and "no UTC form" in rejected["detail"]

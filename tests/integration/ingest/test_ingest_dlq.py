"""Dead letters on the real broker and Redis: every one listed through ingest's admin
API (past 10,000, across partitions, filtered), and replay never sends one twice."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from infra.cli import app
from infra.dlq import LetterQuery, list_pages, replay_pages
from libs.common.clients.kafka.reader import read_to_end
from libs.common.settings import Settings
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_server import (
    ADMIN_TOKEN,
    MakeIngestSettings,
    eventually,
    serving,
)

pytestmark = pytest.mark.integration


def unknown(i: int, at: datetime, sources: int, wave: str = "a") -> dict[str, Any]:
    """A signal of a source nobody registered: dead-lettered as unknown_source, keyed by
    its source, so letters spread over the partitions."""
    return {
        "source": f"nosuch{i % sources}",
        "entity_id": f"e-{wave}-{i}",
        "event_time": at.isoformat(),
        "fields": {"n": i},
    }


async def post_all(url: str, records: list[dict[str, Any]], batch: int = 4000) -> int:
    """POST `records` in batches; the number rejected (each one a dead letter)."""
    rejected = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for start in range(0, len(records), batch):
            r = await http.post("/v1/signals", json=records[start : start + batch])
            assert r.status_code in (207, 422), r.text
            rejected += len(r.json()["rejected"])
    return rejected


def operator(settings: IngestSettings) -> Settings:
    """The CLI's settings: ingest's port and the admin token."""
    return Settings(
        ingest_port=settings.ingest_port,
        admin_token=ADMIN_TOKEN,
        topics=settings.topics,
    )


async def listed(settings: IngestSettings, query: LetterQuery) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        return [x for page in list_pages(operator(settings), query) for x in page["letters"]]

    return await asyncio.to_thread(run)


async def test_more_than_10000_dead_letters_are_all_listed_and_filtered(
    make_ingest_settings: MakeIngestSettings, kafka_bootstrap: str
) -> None:
    """12,000 rejected records over two partitions: the paged listing returns each dead
    letter once, and reason, source and time filters pick exactly their share."""
    settings = await make_ingest_settings()
    now = datetime.now(UTC)
    async with serving(settings) as url:
        # Two waves with a time between them, so a time filter has something to split.
        first = await post_all(url, [unknown(i, now, 6) for i in range(7000)])
        between = datetime.now(UTC)
        wrong_type = [
            {"source": "sensors", "entity_id": f"d-{i}", "event_time": now.isoformat(),
             "fields": {"temperature": "hot", "vibration": 1.0, "status": "ok"}}
            for i in range(1000)
        ]  # fmt: skip
        second = await post_all(url, [unknown(i, now, 6, "b") for i in range(4000)] + wrong_type)
        assert (first, second) == (7000, 5000)

        on_topic = await read_to_end(kafka_bootstrap, settings.topics.dlq, within_s=120)
        assert len({d.partition for d in on_topic}) == 2, "letters must span both partitions"

        everything = await listed(settings, LetterQuery(page_size=1000))
        assert len(everything) == 12000
        assert len({x["event_id"] for x in everything}) == 12000
        assert {(x["partition"], x["offset"]) for x in everything} == {
            (d.partition, d.offset) for d in on_topic
        }

        assert len(await listed(settings, LetterQuery(reason="unknown_source"))) == 11000
        assert len(await listed(settings, LetterQuery(source="sensors"))) == 1000
        assert len(await listed(settings, LetterQuery(source="nosuch0"))) == 1167 + 667
        later = await listed(settings, LetterQuery(since=between))
        assert len(later) == 5000
        assert len(await listed(settings, LetterQuery(until=between))) == 7000
        assert (
            len(await listed(settings, LetterQuery(reason="unknown_source", since=between))) == 4000
        )


async def test_an_interrupted_replay_run_again_never_replays_a_letter_twice(
    make_ingest_settings: MakeIngestSettings, kafka_bootstrap: str
) -> None:
    """A replay stopped after its first page and run again skips what was replayed and
    replays the rest: every original is on signals.raw exactly once; a third run
    replays nothing."""
    settings = await make_ingest_settings()
    now = datetime.now(UTC)
    records = [unknown(i, now, 4) for i in range(450)]
    originals = sorted(json.dumps(r, separators=(",", ":")).encode() for r in records)
    async with serving(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for body in originals:  # one record per request: the letter holds its bytes
                r = await http.post("/v1/signals", content=body)
                assert r.status_code == 422, r.text
        # Letters written by replay itself (raw -> ingest -> dlq again) come after `until`.
        query = LetterQuery(reason="unknown_source", until=datetime.now(UTC), page_size=100)
        op = operator(settings)

        def first_page_only() -> dict[str, Any]:
            return next(iter(replay_pages(op, query, None)))  # the operator hit Ctrl-C

        interrupted = await asyncio.to_thread(first_page_only)
        assert interrupted["counts"] == {"replayed": 100}
        assert interrupted["cursor"] is not None

        def whole_run() -> list[dict[str, Any]]:
            return [line for page in replay_pages(op, query, None) for line in page["results"]]

        rerun = await asyncio.to_thread(whole_run)
        outcomes = [line["outcome"] for line in rerun]
        assert (outcomes.count("skipped"), outcomes.count("replayed")) == (100, 350)
        again = await asyncio.to_thread(whole_run)
        assert {line["outcome"] for line in again} == {"skipped"}

        # Replayed records went through ingest's raw consumer and were judged again.
        async def judged_again() -> bool:
            late = await listed(settings, LetterQuery(since=query.until))
            return len(late) == 450 and {x["original_topic"] for x in late} == {settings.topics.raw}

        await eventually(judged_again, timeout_s=60)

        # The CLI on the same API: a third run skips all 450; the listing counts them.
        env = {
            "SIGNALOPS_INGEST_PORT": str(settings.ingest_port),
            "SIGNALOPS_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIGNALOPS_TOPICS__RAW": settings.topics.raw,
            "COLUMNS": "200",  # rich wraps at the terminal width
        }
        until = ["--reason", "unknown_source", "--until", query.until.isoformat()]  # type: ignore[union-attr]
        cli = CliRunner()
        replayed = await asyncio.to_thread(
            cli.invoke, app, ["dlq", "replay", *until], env=env, terminal_width=200
        )
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 0 to" in replayed.output and "450 skipped" in replayed.output
        shown = await asyncio.to_thread(
            cli.invoke, app, ["dlq", "list", *until, "--limit", "5"], env=env, terminal_width=200
        )
        assert shown.exit_code == 0, shown.output
        assert "450 dead letters match of 900 read (5 newest shown)" in shown.output

    raw = await read_to_end(kafka_bootstrap, settings.topics.raw, within_s=60)
    assert sorted(d.value for d in raw) == originals

"""The prediction log against the real broker: batched, retried through a broker pause,
and every record accounted for (sent, given up, dropped or still queued)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from libs.common.clients.kafka.reader import read_to_end
from libs.common.schemas import ModelRef, PredictionMade, new_id
from libs.common.settings import Settings
from libs.common.testing import paused
from services.serve.adapters.prediction_log import KafkaPredictionLog
from tests.integration.serve.stack import wait_for


def _prediction(n: int) -> PredictionMade:
    return PredictionMade(
        event_id=new_id(),
        event_time=datetime.now(UTC),
        entity_id=f"e-{n % 7}",
        model=ModelRef(name="default", version="1", variant="champion"),
        score=n / 1000,
        features={"view.x": float(n)},
        degraded=False,
        reasons=[],
    )


async def _logged_ids(settings: Settings) -> Counter[str]:
    records = await read_to_end(settings.kafka_bootstrap, settings.topics.predictions)
    return Counter(PredictionMade.from_bytes(d.value).event_id for d in records)


async def test_broker_paused_records_are_retried_and_all_arrive(
    make_settings, kafka_broker, kafka_bootstrap: str
) -> None:  # type: ignore[no-untyped-def]
    """Emitted while the broker is frozen for 4 s: sends time out, are retried with
    backoff, and every record arrives afterwards; nothing given up, nothing dropped."""
    settings = make_settings(kafka_bootstrap=kafka_bootstrap)
    counted: Counter[str] = Counter()
    plog = KafkaPredictionLog(
        settings,
        client_id="test-plog",
        timeout_s=1.0,
        attempts=20,
        on_count=lambda outcome, n: counted.update({outcome: n}),
    )
    await plog.start()
    emitted: list[str] = []
    try:
        first = [_prediction(n) for n in range(200)]
        plog.emit([(p.entity_id, p) for p in first])
        emitted += [p.event_id for p in first]
        await wait_for(lambda: plog.stats()["sent"] == 200, timeout_s=30, what="the first 200 sent")
        with paused(kafka_broker.pid):
            for k in range(4):
                more = [_prediction(1000 * (k + 1) + n) for n in range(100)]
                plog.emit([(p.entity_id, p) for p in more])
                emitted += [p.event_id for p in more]
                await asyncio.sleep(1.0)
        await wait_for(
            lambda: plog.stats()["sent"] >= 600, timeout_s=60, what="every record acknowledged"
        )
    finally:
        await plog.stop()
    stats = plog.stats()
    assert stats["failed"] == 0 and stats["dropped"] == 0, stats
    assert stats["retried"] > 0, "the pause must have made some send time out and retry"
    assert counted["sent"] == stats["sent"] and counted["retried"] == stats["retried"]
    logged = await _logged_ids(settings)
    assert set(emitted) <= set(logged), f"{len(set(emitted) - set(logged))} records lost"


async def test_records_given_up_or_dropped_are_counted_never_silent(
    make_settings, kafka_broker, kafka_bootstrap: str
) -> None:  # type: ignore[no-untyped-def]
    """A queue of 50 and two quick attempts while the broker is frozen: what cannot be
    sent is counted as failed or dropped, and the counts add up to what was emitted."""
    settings = make_settings(kafka_bootstrap=kafka_bootstrap)
    plog = KafkaPredictionLog(
        settings, client_id="test-plog-loss", max_pending=50, timeout_s=0.5, attempts=2
    )
    await plog.start()
    emitted = 0
    try:
        plog.emit([(p.entity_id, p) for p in (_prediction(n) for n in range(20))])
        emitted += 20
        await wait_for(lambda: plog.stats()["sent"] == 20, timeout_s=30, what="the first 20 sent")
        with paused(kafka_broker.pid):
            for _ in range(6):
                plog.emit([(p.entity_id, p) for p in (_prediction(n) for n in range(40))])
                emitted += 40
                await asyncio.sleep(0.5)
            stats = plog.stats()
            assert stats["dropped"] > 0, "a full queue must drop and count"
            await wait_for(
                lambda: plog.stats()["failed"] > 0, timeout_s=20, what="a batch given up"
            )
        await wait_for(lambda: plog.stats()["queued"] == 0, timeout_s=60, what="the queue drained")
        await asyncio.sleep(1.0)
    finally:
        await plog.stop()
    stats = plog.stats()
    assert stats["sent"] + stats["failed"] + stats["dropped"] == emitted, stats
    logged = await _logged_ids(settings)
    # A record given up may still have left in the end (the broker acknowledged late):
    # what arrived is at least what was counted as sent, never more than emitted.
    assert stats["sent"] <= len(logged) <= emitted

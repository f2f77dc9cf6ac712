"""Recovery (issue 7): a features process killed mid-stream and restarted ends with the
online and offline stores of an uninterrupted run: nothing double-counted, nothing lost."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path
from signal import SIGKILL

from libs.common.clients.kafka import KafkaPublisher
from libs.common.clients.kafka.reader import read_to_end
from libs.common.clients.redis import RedisFeatureStore, make_redis, state_key
from libs.common.features import codec
from libs.common.features.plan import ViewPlan
from libs.common.offline import SIGNALS, OfflineStore
from libs.common.schemas import DeadLetter
from libs.common.testing import spawn_service, stop_service
from tests.integration.features.streams import (
    VIEWS,
    Committed,
    definitions_of,
    env_of,
    features_settings,
    history,
    of_view,
    reference,
    signal,
    vector_mismatches,
)

ENTITIES = 200
PER_ENTITY = 25


async def test_killed_mid_stream_and_restarted_equals_an_uninterrupted_run(
    make_settings,
    kafka_bootstrap: str,
    redis_url: str,
    unique: str,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """5,000 signals over 200 entities (with late, too-late and poison records) are
    consumed by a features process SIGKILLed twice mid-stream (aimed between a batch's
    Redis save and its commit) and restarted:
    every vector equals the in-process replay of the published records in Kafka order
    (events_1h counts each event once), the offline store reads back exactly the kept
    positions, and each poison record has one dead-letter id.
    """
    settings = await features_settings(
        make_settings,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        batch_records=150,
        consumer_session_timeout_ms=6000,
    )
    definitions = definitions_of(settings)
    rng = random.Random(5)
    entities = [f"rc-{unique}-{i}" for i in range(ENTITIES)]
    # Event times within 40 minutes of each entity's newest; late events, but no
    # too-late or poison records in the middle of the stream, where the kills fall
    # (a batch with a dead letter waits for the paused broker before its Redis save).
    start = time.time() - 3000
    signals = history(entities, PER_ENTITY, start, rng, step_s=90, too_late=0.0)

    # 1. The whole backlog on signals.valid; poison and too-late records at both ends.
    pub = KafkaPublisher(kafka_bootstrap, client_id="test")
    await pub.start()
    poison = 0
    try:
        chunks = range(0, len(signals), 100)
        for n, at in enumerate(chunks):
            await pub.publish_many(
                [(settings.topics.valid, s, s.entity_id) for s in signals[at : at + 100]]
            )
            if 3 <= n < len(chunks) - 3:
                continue
            victim = entities[n]
            odd = signal(victim, start + 600, rng)
            bad = [
                odd.model_copy(update={"source": "nowhere", "event_id": f"u-{unique}-{n}"}),
                odd.model_copy(
                    update={"fields": {**odd.fields, "temperature": "hot"}, "event_id": f"m{n}"}
                ),
            ]
            if n >= 3:  # after the entity's events: beyond the allowed lateness
                bad.append(signal(victim, start - 3700, rng))
            await pub.publish_raw(settings.topics.valid, b"\xff not json %d" % n, key=victim)
            await pub.publish_many([(settings.topics.valid, s, victim) for s in bad])
            poison += 1 + len(bad)
    finally:
        await pub.stop()
    total = len(signals) + poison

    # 2. Consume it with a process killed (SIGKILL: no shutdown, no final commit) twice
    # mid-stream, then restarted to the end. Each kill aims at a batch whose states are
    # saved in Redis but whose offsets are not committed yet: its redelivery must change
    # nothing (the states' Kafka positions skip it).
    env = env_of(settings)
    log = tmp_path / "features.log"
    view = definitions.feature_views[0]
    plan = ViewPlan.of(view, definitions.source(view.source))
    keys = [state_key(view.name, view.version, plan.fingerprint, e) for e in entities]
    store = RedisFeatureStore(make_redis(redis_url))
    redelivered_applied = 0

    async def guards() -> list[list[int]]:
        return codec.decode(plan, await store.load_states(keys)).guard.tolist()

    try:
        async with Committed(settings) as committed:
            for share in (0.3, 0.6):
                proc = spawn_service("services.features.main", env, log)
                try:
                    # Past `share` of the stream, kill as soon as Redis holds a batch
                    # whose offsets are not committed (or at `share` + 0.2 at the latest).
                    deadline = time.monotonic() + 40
                    while True:
                        assert proc.poll() is None, log.read_text()[-3000:]
                        assert time.monotonic() < deadline, "no progress"
                        done = await committed.by_partition()
                        now = await guards()
                        ahead = any(o >= done[p] for p, o in now if o >= 0)
                        consumed = sum(done.values())
                        if consumed >= (share + 0.2) * total or (
                            consumed >= share * total and ahead
                        ):
                            break
                        await asyncio.sleep(0.005)
                finally:
                    os.kill(proc.pid, SIGKILL)
                    proc.wait()
                # Applied in Redis, yet to be redelivered from the last commit.
                final = await committed.by_partition()
                redelivered_applied += sum(o >= final[p] for p, o in now if o >= 0)
            proc = spawn_service("services.features.main", env, log)
            try:
                await committed.wait_for(total, 60)
            finally:
                stop_service(proc, timeout_s=20)
    finally:
        await store.close()
    assert log.read_text().count("features_started") == 3
    # How many applied records were redelivered depends on where the kills fell (the
    # window between a save and its commit is short); shown, not asserted.
    print(f"records applied in Redis and redelivered: {redelivered_applied}")

    # 3. The reference: the published records applied in-process, in Kafka order.
    expected = await reference(settings, definitions)
    store = RedisFeatureStore(make_redis(redis_url))
    try:
        online = of_view(await store.read_vectors(VIEWS, entities))
    finally:
        await store.close()
    problems: list[str] = []
    for entity, vec in zip(entities, online, strict=True):
        assert vec is not None, entity
        problems += vector_mismatches(vec.values, expected.vectors[entity], entity)
        if vec.as_of != expected.as_of[entity]:
            problems.append(f"{entity}: as_of {vec.as_of} != {expected.as_of[entity]}")
        # events_1h: each applied event in the window's 12 tiles of 300 s, once.
        newest_tile = vec.as_of // 300
        counted = sum(newest_tile - 12 < ts // 300 for ts in expected.accepted[entity])
        if vec.values["events_1h"] != counted:
            problems.append(f"{entity}: events_1h {vec.values['events_1h']} != {counted}")
    assert problems == []
    assert sum(len(ts) for ts in expected.accepted.values()) > 0.9 * len(signals)

    # 4. Offline: exactly the kept positions, once each after the readers' dedupe.
    rows = OfflineStore(settings.offline_dir).read(SIGNALS)
    positions = list(
        zip(rows.column("partition").to_pylist(), rows.column("offset").to_pylist(), strict=True)
    )
    assert len(positions) == len(set(positions)) == len(expected.kept)
    assert set(positions) == expected.kept

    # 5. Dead letters: one id per rejected record (a redelivered batch re-sends the same
    # ids), and each rejected record has one.
    letters = [
        DeadLetter.from_bytes(d.value)
        for d in await read_to_end(kafka_bootstrap, settings.topics.dlq)
    ]
    by_id = {d.event_id: d for d in letters}
    assert len(by_id) == len(expected.rejected)
    assert Counter(d.reason for d in by_id.values()) == Counter(expected.rejected.values())
    assert Counter(expected.rejected.values())["invalid_message"] == 6
    assert set(Counter(expected.rejected.values())) == {
        "invalid_message",
        "unknown_source",
        "feature_type_mismatch",
        "too_late",
    }

"""`signalops features rebuild`: the online store replayed from the offline store equals
the one the features service streamed (real broker, real redis-server)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from infra.cli import app
from libs.common.clients.redis import RedisFeatureStore, make_redis, state_key
from libs.common.features import codec
from libs.common.features.engine import vectors
from libs.common.features.plan import ViewPlan
from libs.common.offline import SIGNALS, OfflineStore, signal_row
from services.features.main import run
from services.features.rebuild import rebuild
from tests.integration.features.streams import (
    VIEW,
    VIEWS,
    Committed,
    definitions_of,
    env_of,
    features_settings,
    history,
    of_view,
    publish,
    vector_mismatches,
)


async def test_rebuild_after_a_redis_loss_equals_the_streamed_store(
    make_settings, kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Signals of 50 entities with late, out-of-order and too-late arrivals are streamed
    through the service; after FLUSHDB, `signalops features rebuild` writes back every
    vector exactly (as_of exactly, floats to 1e-9) and states that decode to the same
    vectors and Kafka positions.
    """
    # Redis db 1 of the session server: the FLUSHDB below wipes no other test's keys.
    url = redis_url.rsplit("/", 1)[0] + "/1"
    settings = await features_settings(
        make_settings, kafka_bootstrap=kafka_bootstrap, redis_url=url
    )
    definitions = definitions_of(settings)
    view = definitions.view(VIEW)
    plan = ViewPlan.of(view, definitions.source(view.source))
    rng = random.Random(7)
    entities = [f"rb-{unique}-{i}" for i in range(50)]
    # Event times around yesterday's midnight (UTC): rows land in two date folders.
    midnight = (time.time() // 86400) * 86400 - 86400
    signals = history(entities, 20, midnight - 900, rng)

    # 1. Stream the history through the running service, until all of it is committed.
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    try:
        await publish(settings, signals)
        async with Committed(settings) as committed:
            await committed.wait_for(len(signals), 40)
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
    assert len(OfflineStore(settings.offline_dir).dates(SIGNALS)) == 2

    # 2. Snapshot every entity's vector and state bytes, then lose Redis' data.
    store = RedisFeatureStore(make_redis(url))
    keys = [state_key(view.name, view.version, plan.fingerprint, e) for e in entities]
    try:
        streamed = of_view(await store.read_vectors(VIEWS, entities))
        streamed_states = codec.decode(plan, await store.load_states(keys))
        assert all(v is not None for v in streamed)
        await store._r.flushdb()  # the test plays the lost Redis
        assert of_view(await store.read_vectors(VIEWS, entities)) == [None] * len(entities)

        # 3. Rebuild through the CLI (the operator's path), then compare.
        started = time.time()
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["features", "rebuild"], env=env_of(settings)
        )
        assert result.exit_code == 0, result.output
        assert VIEW in result.output and "events replayed" in result.output
        rebuilt = of_view(await store.read_vectors(VIEWS, entities))
        rebuilt_states = codec.decode(plan, await store.load_states(keys))
    finally:
        await store.close()

    problems: list[str] = []
    for entity, before, after in zip(entities, streamed, rebuilt, strict=True):
        assert before is not None and after is not None, entity
        problems += vector_mismatches(after.values, before.values, entity)
        if after.as_of != before.as_of:
            problems.append(f"{entity}: as_of {after.as_of} != {before.as_of}")
        assert after.updated_at >= started
    assert problems == []
    # The states hold the same windows and the same Kafka positions (so a restarted
    # service skips what the rebuild applied), except after a too-late record: the
    # service's guard moved past it, but it is dead-lettered, not stored offline, so the
    # rebuilt guard stays on the last stored record (a redelivery of the too-late record
    # is too late again: same verdict, same dead-letter id).
    np.testing.assert_array_equal(rebuilt_states.guard[:, 0], streamed_states.guard[:, 0])
    rows = OfflineStore(settings.offline_dir).read(SIGNALS)
    stored = set(
        zip(rows.column("partition").to_pylist(), rows.column("offset").to_pylist(), strict=True)
    )
    for entity, (p, mine), (_, theirs) in zip(
        entities, rebuilt_states.guard.tolist(), streamed_states.guard.tolist(), strict=True
    ):
        assert mine == theirs or (mine < theirs and (p, theirs) not in stored), entity
    np.testing.assert_array_equal(rebuilt_states.newest, streamed_states.newest)
    for entity, a, b in zip(
        entities, vectors(plan, rebuilt_states), vectors(plan, streamed_states), strict=True
    ):
        problems += vector_mismatches(a, b, f"state of {entity}")
    assert problems == []
    for entity, a, b in zip(entities, vectors(plan, rebuilt_states), rebuilt, strict=True):
        assert b is not None
        problems += vector_mismatches(a, b.values, f"state vs vector of {entity}")
    assert problems == []


async def test_rebuild_one_view_reports_and_an_unknown_view_is_refused(
    make_settings, kafka_bootstrap: str, redis_url: str, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """`rebuild(views=[...])` reports entities and rows per view from the offline store
    alone (no service running), and an unknown view name fails the CLI with exit 1."""
    url = redis_url.rsplit("/", 1)[0] + "/2"
    settings = await features_settings(
        make_settings, kafka_bootstrap=kafka_bootstrap, redis_url=url
    )
    rng = random.Random(3)
    entities = [f"rv-{unique}-{i}" for i in range(5)]
    signals = history(entities, 6, time.time() - 3600, rng)
    OfflineStore(settings.offline_dir).append(
        SIGNALS,
        [
            signal_row(s, topic=settings.topics.valid, partition=0, offset=i)
            for i, s in enumerate(signals)
        ],
    )
    report = await rebuild(settings, views=[VIEW])
    (one,) = report.views
    assert (one.view, one.entities, one.expired, one.events) == (VIEW, 5, 0, len(signals))

    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["features", "rebuild", "--view", "nope"], env=env_of(settings)
    )
    assert result.exit_code == 1
    assert "nope" in result.output

"""No training/serving skew (issue 7): what serve read online at a time is what the
training replay of the offline store gives for that entity and time."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pandas as pd

from libs.common.clients.redis import RedisFeatureStore, StoredVector, make_redis
from libs.common.features.plan import ViewPlan
from libs.common.features.replay import AS_OF, AT, ENTITY, vectors_at
from libs.common.offline import SIGNALS, OfflineStore
from services.features.main import run
from tests.integration.features.streams import (
    VIEW,
    VIEWS,
    Committed,
    definitions_of,
    features_settings,
    history,
    of_view,
    publish,
    same_value,
)

PHASES = 6


async def test_online_vectors_equal_the_training_replay_at_every_read(
    make_settings, kafka_bootstrap: str, redis_url: str, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """A recorded history (late, out-of-order and too-late arrivals) is streamed through
    the real service in phases; after each phase the online vectors of 60 entities are
    read at time p. `replay.vectors_at` over the offline store the service wrote gives,
    for every (entity, p), the same values and as_of (at least 200 points).
    """
    settings = await features_settings(
        make_settings, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    definitions = definitions_of(settings)
    view = definitions.view(VIEW)
    plan = ViewPlan.of(view, definitions.source(view.source))
    rng = random.Random(11)
    entities = [f"sk-{unique}-{i}" for i in range(60)]
    recorded = history(entities, 24, time.time() - 4 * 3600, rng, step_s=300)
    size = math.ceil(len(recorded) / PHASES)

    served: list[tuple[str, float, StoredVector | None]] = []
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    store = RedisFeatureStore(make_redis(redis_url))
    try:
        async with Committed(settings) as committed:
            for k in range(PHASES):
                # Each phase arrives now: ingest would stamp these arrival times.
                arrived = time.time()
                phase = [
                    s.model_copy(update={"ingested_at": pd.Timestamp(arrived, unit="s", tz="UTC")})
                    for s in recorded[k * size : (k + 1) * size]
                ]
                await publish(settings, phase)
                await committed.wait_for(min((k + 1) * size, len(recorded)), 30)
                p = time.time()
                for entity, vec in zip(
                    entities, of_view(await store.read_vectors(VIEWS, entities)), strict=True
                ):
                    served.append((entity, p, vec))
                await asyncio.sleep(0.01)  # the next phase arrives strictly after p
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await store.close()

    # The training side: the offline store's rows replayed as retrain replays them.
    rows = OfflineStore(settings.offline_dir).read(SIGNALS).to_pandas()
    rows = rows[rows["source"] == view.source]
    queries = pd.DataFrame({ENTITY: [e for e, _, _ in served], AT: [p for _, p, _ in served]})
    trained = vectors_at(plan, rows, queries)

    names = [f.spec.name for f in plan.features]
    problems = []
    present = 0
    for i, (entity, p, vec) in enumerate(served):
        row = trained.iloc[i]
        if vec is None:
            if not math.isnan(row[AS_OF]):
                problems.append(f"{entity}@{p}: nothing online, training has as_of {row[AS_OF]}")
            continue
        present += 1
        if row[AS_OF] != vec.as_of:
            problems.append(f"{entity}@{p}: as_of {row[AS_OF]} != online {vec.as_of}")
        problems += [
            f"{entity}@{p}.{n}: training {row[n]!r} != online {vec.values.get(n)!r}"
            for n in names
            if not same_value(row[n], vec.values.get(n))
        ]
    assert problems == []
    assert len(served) >= 300 and present >= 250
    # The points are not trivially equal: entities' vectors change between phases.
    changed = {e for e, _, v in served if v is not None}
    assert len(changed) == len(entities)
    as_ofs = {(e, v.as_of) for e, _, v in served if v is not None}
    assert len(as_ofs) > 4 * len(entities)

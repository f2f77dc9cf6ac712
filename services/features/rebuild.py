"""Rebuilding the online store from the offline store, after Redis lost its data.

Every view's states and vectors are replayed from the signal rows the features
service wrote (libs/common/features/replay.py, the engine the service runs), so the
rebuilt store equals what the service had streamed into it (issue 7). The states
keep the Kafka positions they hold: a service restarted afterwards skips the records
the rebuild already applied. Run it with the features service stopped, or its live
writes race with the rebuild's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from libs.common.clients.redis import (
    FeatureStore,
    RedisFeatureStore,
    StoredVector,
    make_redis,
    state_key,
)
from libs.common.definitions import FeatureView, load_definitions
from libs.common.features import codec
from libs.common.features.engine import States, vectors
from libs.common.features.plan import ViewPlan
from libs.common.features.replay import ARRIVAL, ENTITY, final_states
from libs.common.observability import get_logger
from libs.common.offline import SIGNALS, OfflineStore
from services.features.settings import FeaturesSettings

log = get_logger(__name__)

# Entities written per MULTI/EXEC: about 12 MB of states for the demo's view.
ENTITIES_PER_WRITE = 5_000
_COLUMNS = [ENTITY, "ts", ARRIVAL, "partition", "offset", "fields_json"]

# (view name, entities written so far, entities to write) after each write.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ViewRebuild:
    """What the rebuild wrote for one view.

    Attributes:
        view, version: the view.
        entities: entities whose state and vector were written.
        expired: entities left out because their newest arrival is older than the
            vector TTL (online they had expired, so they stay cold starts).
        events: offline signal rows replayed (of the view's source and schema version).
        seconds: wall time of the view's replay and writes.
    """

    view: str
    version: int
    entities: int
    expired: int
    events: int
    seconds: float


@dataclass(frozen=True)
class RebuildReport:
    views: list[ViewRebuild]

    @property
    def entities(self) -> int:
        return sum(v.entities for v in self.views)


async def rebuild(
    settings: FeaturesSettings,
    *,
    views: Sequence[str] | None = None,
    progress: Progress | None = None,
    store: FeatureStore | None = None,
    now: float | None = None,
) -> RebuildReport:
    """Replay the offline store into the online store's states and vectors.

    Args:
        settings: where the offline store, the definitions and Redis are.
        views: names of the views to rebuild; None rebuilds every view.
        progress: called after each write with (view, entities written, entities).
        store: the online store; a Redis store on `settings.redis_url` when None
            (closed at the end; a passed store is left open).
        now: the time vectors are stamped with (`updated_at`) and the TTL is counted
            from; the clock when None.

    Returns:
        Per view: entities written and left out, rows replayed, seconds.

    Raises:
        KeyError: a name in `views` is not a view of the definitions file.
    """
    definitions = load_definitions(settings.definitions)
    chosen = definitions.feature_views if views is None else [definitions.view(n) for n in views]
    own_store = store is None
    online: FeatureStore = store or RedisFeatureStore(
        make_redis(settings.redis_url, settings.call_timeout_s), vector_ttl_s=settings.vector_ttl_s
    )
    stamp = time.time() if now is None else now
    try:
        # One read for every view: a source's rows, deduplicated by Kafka position.
        table = await asyncio.to_thread(OfflineStore(settings.offline_dir).read, SIGNALS)
        signals = table.select([*_COLUMNS, "source", "schema_version"]).to_pandas()
        done = []
        for view in chosen:
            source = definitions.source(view.source)
            rows = signals[
                (signals["source"] == source.name) & (signals["schema_version"] == source.version)
            ][_COLUMNS]
            done.append(
                await _rebuild_view(
                    ViewPlan.of(view, source),
                    rows,
                    online,
                    now=stamp,
                    ttl_s=settings.vector_ttl_s,
                    progress=progress,
                )
            )
        return RebuildReport(done)
    finally:
        if own_store:
            await online.close()


async def _rebuild_view(
    plan: ViewPlan,
    rows: pd.DataFrame,
    store: FeatureStore,
    *,
    now: float,
    ttl_s: float,
    progress: Progress | None,
) -> ViewRebuild:
    started = time.perf_counter()
    view = plan.view
    # An entity the service last wrote more than the TTL ago had expired online.
    last_arrival = rows.groupby(ENTITY)[ARRIVAL].max()
    live = rows[rows[ENTITY].isin(last_arrival.index[last_arrival >= now - ttl_s])]
    total = int(live[ENTITY].nunique())
    written = 0
    if progress is not None:
        progress(view.name, 0, total)
    # The replay yields a chunk of entities at a time; each is computed off the loop.
    chunks = final_states(plan, live)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        entities, states = chunk
        for start in range(0, len(entities), ENTITIES_PER_WRITE):
            end = start + ENTITIES_PER_WRITE
            rows_here = np.arange(start, min(end, len(entities)))
            written += await _write(
                plan, view, entities[start:end], states.take(rows_here), store, now
            )
            if progress is not None:
                progress(view.name, written, total)
    seconds = time.perf_counter() - started
    expired = len(last_arrival) - total
    log.info(
        "features_rebuilt",
        view=view.name,
        version=view.version,
        entities=written,
        expired=expired,
        events=len(rows),
        seconds=round(seconds, 3),
    )
    return ViewRebuild(view.name, view.version, written, expired, len(rows), seconds)


async def _write(
    plan: ViewPlan,
    view: FeatureView,
    entities: list[str],
    states: States,
    store: FeatureStore,
    now: float,
) -> int:
    """Save one chunk's states and vectors in one transaction; returns entities written."""
    blobs = codec.encode(plan, states)
    vecs = vectors(plan, states)
    has = states.has_events
    keep = [i for i in range(len(entities)) if has[i]]
    await store.save(
        [
            (state_key(view.name, view.version, plan.fingerprint, entities[i]), blobs[i])
            for i in keep
        ],
        [
            (
                view.name,
                view.version,
                entities[i],
                StoredVector(vecs[i] or {}, float(states.newest[i]), now),
            )
            for i in keep
        ],
    )
    return len(keep)

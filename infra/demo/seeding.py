"""The back-dated history every entity starts with, applied before the live clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from infra.demo.feed import post_signals, predict
from infra.demo.population import Population
from infra.demo.state import DemoState
from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import ModelDefinition
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticSource

SEED_CHUNK = 1000


def seed_history(
    http: httpx.Client,
    settings: Settings,
    model: ModelDefinition,
    views: list[tuple[str, int]],
    population: Population,
    sources: list[SyntheticSource],
    labeller: SyntheticSource,
    state: DemoState,
    show: Callable[[], None],
) -> None:
    """Back-dated history for every entity, then wait until the features hold all of it;
    start from the truth the champion agrees with."""
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    started = time.monotonic()
    state.phase = "seeding"
    past = population.seed(time.time())
    for s in population.schedules:
        for src in sources:
            src.add_entity(s.entity_id)
    state.note(
        f"seeding {len(past) * len(sources):,} back-dated reports of {population.size} entities"
    )
    newest: dict[str, float] = {}
    for i in range(0, len(past), SEED_CHUNK):
        chunk = past[i : i + SEED_CHUNK]
        for src in sources:
            # Only the report itself: the extras (bad, late, duplicate) are the live part's.
            reports = [src.report(e, datetime.fromtimestamp(at, UTC))[0] for at, e in chunk]
            body = [r.payload for r in reports if isinstance(r.payload, dict)]
            post_signals(http, ingest, body, state)
        newest.update({e: at for at, e in chunk})
        state.phase = f"seeding {min(i + SEED_CHUNK, len(past)):,}/{len(past):,}"
        show()
    # Wait on the online store itself, not on predictions: every answer is logged and
    # seen by the drift monitor, and answers from half-applied histories would look
    # like a feature drift (their hour counts are still low).
    deadline = time.monotonic() + 600
    share = 0.0
    while newest and time.monotonic() < deadline:
        share = asyncio.run(_applied_share(settings.redis_url, views, newest))
        state.phase = f"features applied for {share:.0%} of the entities"
        show()
        if share >= 0.99:
            break
        time.sleep(2.0)
    else:
        if newest:
            state.note(f"features caught up on {share:.0%} only in 600 s; going live anyway")
    state.note(f"seeded in {time.monotonic() - started:.0f}s")
    # One small batch to see which truth the champion learnt (50 logged answers).
    probe = list(newest)[-50:]
    answers = predict(http, serve, model.name, probe, state) or []
    scored = [a for a in answers if a["model"]["variant"] != "fallback"]
    if scored:
        agree = sum(
            (a["score"] >= 0.5) == (labeller.decision(a["entity_id"]) == 1.0) for a in scored
        ) / len(scored)
        version = scored[0]["model"]["version"]
        if agree < 0.5:
            # The champion learnt the flipped truth (an earlier demo's retrain): start there.
            for src in sources:
                src.drifted = True
            state.flipped = True
        state.note(
            f"champion v{version} agrees with the "
            f"{'flipped' if state.flipped else 'bootstrap'} truth on {max(agree, 1 - agree):.0%}"
        )


async def _applied_share(
    redis_url: str, views: list[tuple[str, int]], newest: dict[str, float]
) -> float:
    """Share of entities whose every view holds their newest seeded report."""
    store = RedisFeatureStore(make_redis(redis_url))
    try:
        entities = list(newest)
        done = 0
        for i in range(0, len(entities), 1000):
            part = entities[i : i + 1000]
            for e, found in zip(part, await store.read_vectors(views, part), strict=True):
                as_of = [v.as_of for v in found.values()]
                done += len(as_of) == len(views) and min(as_of) >= newest[e] - 1e-3
        return done / len(entities)
    finally:
        await store.close()

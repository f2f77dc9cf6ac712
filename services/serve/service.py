"""The inference service of one replica: answers predictions, runs the replica's tasks.

It wires core logic (predict, priority, traffic) to the adapters it is given, so tests
build it with in-memory fakes and the Serve deployment with the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from libs.common.clients.redis.base import FeatureStore, StoredVector
from libs.common.definitions import Definitions, ModelDefinition
from libs.common.observability.logging import get_logger
from libs.common.schemas import PredictionMade, new_id
from services.serve.adapters.base import ModelEvents, ModelSource, PredictionSink
from services.serve.adapters.features import GuardedFeatureReader
from services.serve.catalog import ModelCatalog
from services.serve.core.lookup import entity_features, select_views
from services.serve.core.predict import (
    FEATURE_STORE_UNAVAILABLE,
    NO_FEATURES,
    NO_MODEL,
    FeatureRow,
    ServedModel,
    assemble_features,
    check_supplied,
    fallback_answer,
    prediction_event,
    scored_answer,
)
from services.serve.core.priority import PriorityLimiter, PriorityLimits
from services.serve.core.traffic import choose_variant
from services.serve.errors import BatchTooLarge, FeatureStoreUnavailable, UnknownModel
from services.serve.schemas import EntityFeatures, PredictionAnswer, PredictRequest
from services.serve.settings import ServeSettings

log = get_logger(__name__)


@dataclass
class _Item:
    """One request of a call while it is being answered."""

    req: PredictRequest
    model: ModelDefinition
    served: ServedModel | None
    features: FeatureRow | None = None
    reasons: tuple[str, ...] = ()
    score: float | None = None
    contributions: dict[str, float] | None = None

    @property
    def needs_store(self) -> bool:
        supplied = self.req.features or {}
        return self.served is not None and not set(self.model.features) <= set(supplied)


class InferenceService:
    """Answers predictions with the models its catalog keeps current.

    A request reads each model's slot once, so it sees one consistent model even
    when a swap lands while it waits on the feature store.
    """

    def __init__(
        self,
        settings: ServeSettings,
        definitions: Definitions,
        *,
        store: FeatureStore,
        models: ModelSource,
        prediction_log: PredictionSink,
        events: ModelEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.definitions = definitions
        self.reader = GuardedFeatureReader(
            store,
            timeout_s=settings.feature_timeout_s,
            fail_max=settings.breaker_fail_max,
            reset_s=settings.breaker_reset_s,
        )
        self.limiter = PriorityLimiter(
            PriorityLimits(
                settings.priority_low_limit,
                settings.priority_normal_limit,
                settings.priority_hard_cap,
            ),
            retry_after_s=settings.retry_after_s,
        )
        self.catalog = ModelCatalog(
            definitions, models, challenger_fraction=settings.challenger_fraction
        )
        self._log = prediction_log
        self._events = events
        self._clock = clock
        self._views = {
            m.name: [(v.name, v.version) for v in definitions.views_of_model(m)]
            for m in definitions.models
        }
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = False
        self.counts: Counter[str] = Counter()

    # ---- lifecycle -------------------------------------------------------------

    async def start(self, *, events_timeout_s: float = 15.0) -> None:
        """Load every model's champion, start the log, follow model events, poll.

        Model events are followed before this returns (within `events_timeout_s`), so
        a replica that is ready sees every later event; otherwise it keeps trying.
        """
        await self._log.start()
        if self._events is not None:
            # Follow first, then read the registry: an event landing in between is
            # applied twice (harmless), never missed.
            await self._events.start(self.catalog.on_model_changed)
            if not await self._events.wait_following(events_timeout_s):
                log.warning("model_events_unavailable", status=self._events.status())
        # A slow registry must not keep the replica from answering: after the wait,
        # the first load goes on in the background and the fallback answers meanwhile.
        first = asyncio.create_task(self.catalog.refresh_all(), name="first registry read")
        self._tasks.append(first)
        await asyncio.wait({first}, timeout=self.settings.registry_startup_wait_s)
        if not first.done():
            log.warning("registry_slow_at_start", waited_s=self.settings.registry_startup_wait_s)
        if self.settings.registry_poll_s > 0:
            self._spawn(self.catalog.poll(self.settings.registry_poll_s, self._stop))
        self.started = True
        log.info("serve_started", models=self.catalog.status())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._events is not None:
            await self._events.stop()
        await self._log.stop()
        await self.reader.close()

    # ---- predictions -----------------------------------------------------------

    def _model(self, name: str | None) -> ModelDefinition:
        name = name or self.definitions.default_model
        try:
            return self.definitions.model(name)
        except KeyError:
            known = [m.name for m in self.definitions.models]
            raise UnknownModel(f"model {name[:64]!r} is not defined; known: {known}") from None

    async def predict(
        self, requests: Sequence[PredictRequest], *, explain: bool = False
    ) -> list[PredictionAnswer]:
        """Answer a batch: one online-store read, one predict call per served model.

        Raises:
            BatchTooLarge, UnknownModel, InvalidFeatures: nothing is answered then.
        """
        started = time.perf_counter()
        if len(requests) > self.settings.batch_max:
            raise BatchTooLarge(
                f"{len(requests)} requests in one batch; at most {self.settings.batch_max}"
            )
        items = []
        for req in requests:
            model = self._model(req.model)
            check_supplied(model, req.features)
            slot = self.catalog.slot(model.name)
            variant = choose_variant(
                req.entity_id,
                self.settings.challenger_fraction,
                has_challenger=slot.challenger is not None,
            )
            items.append(_Item(req, model, slot.pick(variant)))

        await self._attach_features(items)
        await self._score(items, explain=explain)
        return self._answer(items, explain=explain, started=started)

    async def _attach_features(self, items: list[_Item]) -> None:
        now = self._clock()
        need = [i for i in items if i.needs_store]
        found: list[dict[str, StoredVector]] = []
        if need:
            views = sorted({v for i in need for v in self._views[i.model.name]})
            try:
                found = await self.reader.read(views, [i.req.entity_id for i in need])
            except FeatureStoreUnavailable:
                for i in need:
                    i.reasons = (FEATURE_STORE_UNAVAILABLE,)
                need = []
        stored = {id(i): f for i, f in zip(need, found, strict=True)}
        for i in items:
            if i.served is None:
                i.reasons = (NO_MODEL,)
            elif not i.reasons:
                vectors = stored.get(id(i), {})
                mine = {v: vectors[v] for v, _ in self._views[i.model.name] if v in vectors}
                i.features = assemble_features(i.model, mine, i.req.features, now)
                if i.features is None:
                    i.reasons = (NO_FEATURES,)

    async def _score(self, items: list[_Item], *, explain: bool) -> None:
        groups: dict[int, list[_Item]] = {}
        for i in items:
            if i.served is not None and i.features is not None:
                groups.setdefault(id(i.served), []).append(i)
        for group in groups.values():
            served = group[0].served
            assert served is not None
            rows = [i.features.row for i in group if i.features is not None]
            names = group[0].model.features
            if len(rows) > self.settings.predict_inline_max_rows:
                scores = await asyncio.to_thread(served.predictor.predict, rows)
                contribs = (
                    await asyncio.to_thread(served.predictor.contributions, rows, names)
                    if explain
                    else None
                )
            else:  # ~80 µs for one row: cheaper inline than a thread hop
                scores = served.predictor.predict(rows)
                contribs = served.predictor.contributions(rows, names) if explain else None
            for k, i in enumerate(group):
                i.score = float(scores[k])
                i.contributions = contribs[k] if contribs is not None else None

    def _answer(
        self, items: list[_Item], *, explain: bool, started: float
    ) -> list[PredictionAnswer]:
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        at = datetime.now(UTC)
        answers = []
        events: list[tuple[str, PredictionMade]] = []
        for i in items:
            pid = new_id()
            if i.score is not None and i.served is not None and i.features is not None:
                answer = scored_answer(
                    prediction_id=pid,
                    entity_id=i.req.entity_id,
                    served=i.served,
                    score=i.score,
                    features=i.features,
                    latency_ms=latency_ms,
                    contributions=i.contributions,
                )
                self.counts[f"served_{i.served.variant}"] += 1
            else:
                answer = fallback_answer(
                    prediction_id=pid,
                    entity_id=i.req.entity_id,
                    model=i.model,
                    version=i.served.version if i.served else None,
                    reasons=i.reasons,
                    latency_ms=latency_ms,
                    explain=explain,
                )
                for r in i.reasons:
                    self.counts[f"fallback_{r}"] += 1
            features = i.features.features if i.features is not None else {}
            events.append((i.req.entity_id, prediction_event(answer, features, at)))
            answers.append(answer)
        self._log.emit(events)
        return answers

    # ---- online features -------------------------------------------------------

    async def features(
        self, entity_ids: Sequence[str], views: Sequence[str] | None = None
    ) -> list[EntityFeatures]:
        """What the online store holds for each entity, in order: one round trip.

        Args:
            entity_ids: entities to read (at most `features_batch_max`).
            views: view names to read; None or empty reads every view.

        Raises:
            BatchTooLarge, UnknownView: nothing is read then.
            FeatureStoreUnavailable: the read failed or timed out, or the breaker is open.
        """
        limit = self.settings.features_batch_max
        if len(entity_ids) > limit:
            raise BatchTooLarge(f"{len(entity_ids)} entities in one call; at most {limit}")
        selected = select_views(self.definitions, views)
        if not entity_ids:
            return []
        found = await self.reader.read(selected, entity_ids)
        now = self._clock()
        return [
            entity_features(e, selected, vectors, now)
            for e, vectors in zip(entity_ids, found, strict=True)
        ]

    # ---- health ----------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when started (models loaded or fallback-capable) and Redis answers."""
        reasons = []
        if not self.started:
            reasons.append("starting: champions not loaded yet")
        if not await self.reader.ping():
            reasons.append("feature store (Redis) does not answer ping")
        return not reasons, {
            "ready": not reasons,
            "reasons": reasons,
            "models": self.catalog.status(),
            "model_events": self._events.status() if self._events is not None else "off",
            "feature_store_breaker": self.reader.state,
            "registry_breaker": self.catalog.registry_state,
            "prediction_log": self._log.stats(),
        }

    def health(self) -> dict[str, Any]:
        """Liveness: a dead model-events loop fails it (the replica would never follow a
        promotion again); a dependency that is merely down does not (answers degrade).
        """
        dead = self._events.liveness() if self._events is not None else []
        return {
            "status": "dead" if dead else "ok",
            "problems": dead,
            "in_flight": self.limiter.in_flight,
            "shed": {p.value: n for p, n in self.limiter.shed.items()},
            "counts": dict(self.counts),
            "prediction_log": self._log.stats(),
        }

"""The inference service of one replica: answers predictions, runs the replica's tasks.

It wires core logic (predict, priority, traffic) to the adapters it is given, so tests
build it with in-memory fakes and the Serve deployment with the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
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
from services.serve.core.cache import PredictionCache, PredictionKey, prediction_key
from services.serve.core.companion import (
    ModelTimeout,
    companion_reasons,
    companion_scores,
    predict_within,
    prefers_companion,
    prior_reasons,
)
from services.serve.core.lookup import entity_features, select_views
from services.serve.core.predict import (
    FEATURE_STORE_UNAVAILABLE,
    MODEL_FAILED,
    MODEL_TIMEOUT,
    NO_FEATURES,
    NO_MODEL,
    PARTIAL_FEATURES,
    FeatureRow,
    ServedModel,
    assemble_features,
    check_supplied,
    fallback_answer,
    prediction_event,
    scored_answer,
    with_stale_sources,
)
from services.serve.core.priority import (
    DEADLINE_EXCEEDED,
    Deadline,
    Priority,
    PriorityLimiter,
    PriorityLimits,
    QueueLimits,
    seconds_left,
)
from services.serve.core.traffic import route
from services.serve.errors import (
    BatchTooLarge,
    DeadlineExceeded,
    FeatureStoreUnavailable,
    UnknownModel,
)
from services.serve.metrics import ServeMetrics
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
    cache_key: PredictionKey | None = None
    cached: bool = False
    shadow: bool = False  # scored for the log only; never answered by a fallback

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
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ServeMetrics()
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
            queues=QueueLimits(
                low=settings.priority_queue_low,
                normal=settings.priority_queue_normal,
                high=settings.priority_queue_high,
                max_wait_s=settings.priority_queue_max_wait_s,
            ),
            retry_after_s=settings.retry_after_s,
        )
        self.cache = PredictionCache(
            settings.prediction_cache_size if settings.prediction_cache_enabled else 0,
            ttl_s=settings.prediction_cache_ttl_s,
        )
        self.catalog = ModelCatalog(
            definitions,
            models,
            challenger_fraction=settings.challenger_fraction,
            on_served=self.metrics.serving,
        )
        self._log = prediction_log
        self._events = events
        self._clock = clock
        self._views = {
            m.name: [(v.name, v.version) for v in definitions.views_of_model(m)]
            for m in definitions.models
        }
        # Per model, the polled sources of its inputs: reported stale while they are down.
        self._polled = {
            m.name: sorted(
                {
                    v.source
                    for v in definitions.views_of_model(m)
                    if definitions.source(v.source).poll
                }
            )
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
        self,
        requests: Sequence[PredictRequest],
        *,
        explain: bool = False,
        deadline: Deadline | None = None,
    ) -> list[PredictionAnswer]:
        """Answer a batch: one online-store read, one predict call per served model.

        Args:
            requests: the entities to score.
            explain: add per-feature contributions (bypasses the prediction cache).
            deadline: the request's budget on the limiter's clock; the feature read
                gets at most what is left, and a read cut short degrades the answers.

        Raises:
            BatchTooLarge, UnknownModel, InvalidFeatures: nothing is answered then.
            DeadlineExceeded: the deadline passed before the work began.
        """
        started = time.perf_counter()
        if len(requests) > self.settings.batch_max:
            raise BatchTooLarge(
                f"{len(requests)} requests in one batch; at most {self.settings.batch_max}"
            )
        if deadline is not None and deadline.passed(self.limiter.clock()):
            raise DeadlineExceeded(
                "the request's deadline passed before its work began",
                retry_after_s=self.settings.retry_after_s,
            )
        items = []
        shadows: list[tuple[_Item, _Item]] = []  # (answered item, its shadow)
        for req in requests:
            model = self._model(req.model)
            check_supplied(model, req.features)
            slot = self.catalog.slot(model.name)
            routing = route(
                req.entity_id,
                self.catalog.traffic(model.name),
                has_challenger=slot.challenger is not None,
            )
            item = _Item(req, model, slot.pick(routing.answer))
            items.append(item)
            if routing.shadow is not None:
                shadows.append((item, _Item(req, model, slot.pick(routing.shadow), shadow=True)))

        await self._attach_features(items, deadline)
        if not explain:
            self._from_cache(items)
        shadow_items = []
        for item, shadow in shadows:
            if item.features is not None and not item.reasons:
                shadow.features = item.features  # the same row, scored by the challenger
                shadow_items.append(shadow)
        await self._score([i for i in items if not i.cached] + shadow_items, explain=explain)
        return self._answer(items, shadow_items, explain=explain, started=started)

    async def _read(
        self, views: list[tuple[str, int]], entity_ids: list[str], deadline: Deadline | None
    ) -> list[dict[str, StoredVector]]:
        """The feature read within min(feature timeout, what is left of the deadline).

        Raises:
            TimeoutError: the request's budget ran out first (not Redis's fault: the
                breaker does not count it).
            FeatureStoreUnavailable: the store failed, timed out or its breaker is open.
        """
        left = seconds_left(deadline, self.limiter.clock())
        if left >= self.settings.feature_timeout_s:
            return await self.reader.read(views, entity_ids)
        if left <= 0:
            raise TimeoutError("no budget left for the feature read")
        async with asyncio.timeout(left):
            return await self.reader.read(views, entity_ids)

    async def _attach_features(self, items: list[_Item], deadline: Deadline | None = None) -> None:
        now = self._clock()
        need = [i for i in items if i.needs_store]
        found: list[dict[str, StoredVector]] = []
        if need:
            views = sorted({v for i in need for v in self._views[i.model.name]})
            try:
                found = await self._read(views, [i.req.entity_id for i in need], deadline)
            except FeatureStoreUnavailable:
                for i in need:
                    i.reasons = (FEATURE_STORE_UNAVAILABLE,)
                need = []
            except TimeoutError:
                for i in need:
                    i.reasons = (DEADLINE_EXCEEDED,)
                need = []
        stored = {id(i): f for i, f in zip(need, found, strict=True)}
        polled = any(self._polled[i.model.name] for i in items)
        stale = await self.reader.stale_sources() if polled else {}
        for i in items:
            if i.served is None:
                i.reasons = (NO_MODEL,)
            elif not i.reasons:
                vectors = stored.get(id(i), {})
                mine = {v: vectors[v] for v, _ in self._views[i.model.name] if v in vectors}
                i.features = assemble_features(i.model, mine, i.req.features, now)
                if i.features is not None and stale:
                    down = [s for s in self._polled[i.model.name] if s in stale]
                    i.features = with_stale_sources(i.features, down)
                if i.features is None:
                    i.reasons = (NO_FEATURES,)
                elif self.cache.enabled and not i.features.reasons:
                    i.cache_key = self._cache_key(i, mine)

    def _cache_key(self, item: _Item, vectors: dict[str, StoredVector]) -> PredictionKey | None:
        served = item.served
        if served is None:
            return None
        versions = dict(self._views[item.model.name])
        return prediction_key(
            model=served.name,
            version=served.version,
            variant=served.variant,
            entity_id=item.req.entity_id,
            views={v: (versions[v], vec.as_of, vec.updated_at) for v, vec in vectors.items()},
            supplied=item.req.features,
        )

    def _from_cache(self, items: list[_Item]) -> None:
        """Take the scores of exactly these inputs and versions from the cache."""
        hits = misses = 0
        for i in items:
            if i.cache_key is None:
                continue
            score = self.cache.get(i.cache_key)
            if score is None:
                misses += 1
            else:
                hits += 1
                i.score, i.cached = score, True
        if hits or misses:
            self.counts["cache_hit"] += hits
            self.counts["cache_miss"] += misses
            self.metrics.cache(hits=hits, misses=misses)

    async def _score(self, items: list[_Item], *, explain: bool) -> None:
        """Score the items that have a served version and features; never raises.

        The main model answers, except: rows whose main inputs are partial while all
        of the companion's are present go to the version's companion, and so do the
        rows of a main-model call that raised or overran `serve_model_timeout_ms`.
        A companion answer is the version's, variant "fallback", degraded, with
        reasons naming why and `companion`. An item the companion cannot answer
        either keeps no score, and `_answer` gives the constant prior with the reasons.
        """

        def row_of(i: _Item) -> FeatureRow:
            assert i.features is not None
            return i.features

        def by_companion(
            served: ServedModel, names: list[str], answering: list[_Item], cause: str | None
        ) -> list[_Item]:
            """Answer with the companion; returns the items it could not answer."""
            if served.companion is None or not answering:
                return answering
            try:
                scores, contribs = companion_scores(
                    served, [row_of(i).row for i in answering], names, explain=explain
                )
            except Exception:
                log.warning(
                    "companion_failed", model=served.name, version=served.version, exc_info=True
                )
                return answering
            as_fallback = dataclasses.replace(served, variant="fallback")
            for k, i in enumerate(answering):
                features = row_of(i)
                i.served = as_fallback
                i.features = dataclasses.replace(
                    features, reasons=companion_reasons(cause, features)
                )
                i.score = scores[k]
                i.contributions = contribs[k] if contribs is not None else None
            self.counts[f"companion_{cause or PARTIAL_FEATURES}"] += len(answering)
            return []

        groups: dict[int, list[_Item]] = {}
        for i in items:
            if i.served is not None and i.features is not None:
                groups.setdefault(id(i.served), []).append(i)
        for group in groups.values():
            served = group[0].served
            assert served is not None
            names = group[0].model.features
            partial: list[_Item] = []
            main: list[_Item] = []
            for i in group:
                companion_first = not i.shadow and prefers_companion(served, row_of(i))
                (partial if companion_first else main).append(i)
            main += by_companion(served, names, partial, None)  # the main model, if it fails
            if not main:
                continue
            rows = [row_of(i).row for i in main]
            call = functools.partial(served.predictor.score, rows, names if explain else None)
            cause = None
            try:
                # Small calls run inline (~80 µs for one row; a thread hop costs several
                # times that) while the version keeps within its budget.
                scores, contribs = await predict_within(
                    served.budget,
                    call,
                    budget_s=self.settings.serve_model_timeout_ms / 1000,
                    max_overdue=self.settings.serve_model_max_overdue,
                    offload=len(rows) > self.settings.predict_inline_max_rows,
                )
            except ModelTimeout as exc:
                cause = MODEL_TIMEOUT
                log.warning(
                    "model_timeout", model=served.name, version=served.version, why=str(exc)
                )
            except Exception:
                cause = MODEL_FAILED
                log.warning(
                    "model_failed", model=served.name, version=served.version, exc_info=True
                )
            if cause is None:
                for k, i in enumerate(main):
                    i.score = float(scores[k])
                    i.contributions = contribs[k] if contribs is not None else None
                continue
            answered = [i for i in main if not i.shadow]  # a failed shadow stays unscored
            for i in by_companion(served, names, answered, cause):
                i.reasons = prior_reasons(
                    cause, row_of(i), had_companion=served.companion is not None
                )

    def _answer(
        self,
        items: list[_Item],
        shadows: Sequence[_Item] = (),
        *,
        explain: bool,
        started: float,
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
                # Only the model's own, undegraded scores: a fallback or a score on
                # partial inputs is not worth keeping.
                if i.cache_key is not None and not i.cached and not answer.degraded:
                    self.cache.put(i.cache_key, i.score)
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
        for s in shadows:
            # Logged as its own prediction, marked shadow; never part of the answer. Only
            # the challenger's own scores: a failed one (prior or companion) judges nothing.
            if (
                s.score is None
                or s.served is None
                or s.features is None
                or s.served.variant != "challenger"
            ):
                self.counts["shadow_unscored"] += 1
                continue
            shadow = scored_answer(
                prediction_id=new_id(),
                entity_id=s.req.entity_id,
                served=s.served,
                score=s.score,
                features=s.features,
                latency_ms=latency_ms,
            )
            record = prediction_event(shadow, s.features.features, at)
            events.append((s.req.entity_id, record.model_copy(update={"shadow": True})))
            self.counts[f"shadow_{s.served.variant}"] += 1
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
            "queued": {p.value: self.limiter.waiting(p) for p in Priority},
            "deadline_exceeded": {p.value: n for p, n in self.limiter.expired.items()},
            "prediction_cache": {
                "enabled": self.cache.enabled,
                "size": len(self.cache),
                "hits": self.cache.hits,
                "misses": self.cache.misses,
            },
            "prediction_log": self._log.stats(),
        }

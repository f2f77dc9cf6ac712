"""The models a replica serves, kept in step with the registry's aliases.

Each model has one immutable ModelSlot; a swap replaces the slot in one assignment,
so a request that read it sees one consistent model until it answers. Changes come
from models.events (followed per replica) and from a periodic registry poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from datetime import UTC, datetime

from libs.common.definitions import Definitions, ModelDefinition
from libs.common.features import model_columns
from libs.common.observability.logging import get_logger
from libs.common.schemas import ModelChanged, Variant
from services.serve.adapters.base import ModelEvents, ModelSource
from services.serve.adapters.registry import CHALLENGER, CHAMPION
from services.serve.core.predict import ModelSlot, Predictor, ServedModel
from services.serve.core.traffic import traffic_split
from services.serve.schemas import ModelsView, ServedModelInfo

log = get_logger(__name__)


class ModelCatalog:
    """Champion (and challenger) of every model in the definitions, loaded from a source."""

    def __init__(
        self, definitions: Definitions, source: ModelSource, *, challenger_fraction: float
    ) -> None:
        self.definitions = definitions
        self.challenger_fraction = challenger_fraction
        self._source = source
        self._slots: dict[str, ModelSlot] = {m.name: ModelSlot() for m in definitions.models}
        self._locks = {m.name: asyncio.Lock() for m in definitions.models}
        self._load_errors: dict[str, str] = {}
        self.events_status = "off"

    def slot(self, name: str) -> ModelSlot:
        return self._slots[name]

    async def refresh_all(self) -> list[str]:
        """Re-read every model's aliases; returns the names whose served versions changed."""
        names = list(self._slots)
        changed = await asyncio.gather(*(self.refresh(n) for n in names))
        return [n for n, c in zip(names, changed, strict=True) if c]

    async def refresh(self, name: str) -> bool:
        """Follow the registry's champion and challenger aliases of one model.

        Registry calls and loading run in threads. A failed load keeps what serves
        now and is reported by `status`. Returns whether the served versions changed.
        """
        async with self._locks[name]:
            model = self.definitions.model(name)
            current = self._slots[name]
            try:
                champion_v = await asyncio.to_thread(self._source.version_of, name, CHAMPION)
                challenger_v = None
                if champion_v is not None:
                    challenger_v = await asyncio.to_thread(
                        self._source.version_of, name, CHALLENGER
                    )
                if challenger_v == champion_v:
                    challenger_v = None
                new = ModelSlot(
                    champion=await self._served(model, champion_v, "champion", current),
                    challenger=await self._served(model, challenger_v, "challenger", current),
                )
            except Exception as exc:
                self._load_errors[name] = repr(exc)[:300]
                log.error("model_load_failed", model=name, error=repr(exc))
                return False
            self._load_errors.pop(name, None)
            if _versions(new) == _versions(current):
                return False
            self._slots[name] = new
            log.info("model_swapped", model=name, before=_versions(current), after=_versions(new))
            return True

    async def _served(
        self, model: ModelDefinition, version: str | None, variant: Variant, current: ModelSlot
    ) -> ServedModel | None:
        if version is None:
            return None
        for have in (current.champion, current.challenger):
            if have is not None and have.version == version:  # versions are immutable
                return (
                    have if have.variant == variant else dataclasses.replace(have, variant=variant)
                )
        booster = await asyncio.to_thread(self._source.load, model.name, version)
        predictor = Predictor.from_booster(booster, model_columns(model))
        return ServedModel(model.name, version, variant, predictor, datetime.now(UTC))

    async def on_model_changed(self, event: ModelChanged) -> None:
        """Reload a model this replica serves when the registry says it changed."""
        if event.model not in self._slots:
            log.debug("model_event_ignored", model=event.model)
            return
        log.info(
            "model_changed",
            model=event.model,
            version=event.version,
            kind=event.kind,
            alias=event.alias,
        )
        await self.refresh(event.model)

    async def follow(self, events: ModelEvents, stop: asyncio.Event, *, started: bool) -> None:
        """Apply model events until `stop`; a broken feed is reopened with backoff."""
        backoff = 1.0
        while not stop.is_set():
            try:
                if not started:
                    await events.start()
                    started = True
                self.events_status = "following"
                backoff = 1.0
                await events.run(self.on_model_changed, stop)
            except Exception as exc:
                started = False
                self.events_status = f"retrying: {exc!r}"[:200]
                log.warning("model_events_broken", error=repr(exc), retry_in_s=backoff)
                with contextlib.suppress(Exception):
                    await events.stop()
                if await _sleep_or_stop(stop, backoff * random.uniform(0.5, 1.5)):
                    return
                backoff = min(backoff * 2, 30.0)

    async def poll(self, interval_s: float, stop: asyncio.Event) -> None:
        """Re-read the registry every `interval_s` until `stop`.

        Covers events missed while a replica was down, and a first model registered
        before anyone listened (serve answers with the fallback until then).
        """
        while not await _sleep_or_stop(stop, interval_s):
            await self.refresh_all()

    def view(self) -> ModelsView:
        infos: list[ServedModelInfo] = []
        traffic: dict[str, dict[str, float]] = {}
        for name, slot in self._slots.items():
            served = [s for s in (slot.champion, slot.challenger) if s is not None]
            infos += [
                ServedModelInfo(
                    name=name,
                    version=s.version,
                    variant=s.variant,
                    loaded_at=s.loaded_at.isoformat().replace("+00:00", "Z"),
                )
                for s in served
            ]
            if not served:
                infos.append(ServedModelInfo(name=name, version=None, variant="fallback"))
            traffic[name] = traffic_split(
                self.challenger_fraction,
                has_champion=slot.champion is not None,
                has_challenger=slot.challenger is not None,
            )
        return ModelsView(models=infos, traffic=traffic)

    def status(self) -> dict[str, str]:
        """Per model, in words: what serves and the last load failure, if any."""
        out = {}
        for name, slot in self._slots.items():
            error = self._load_errors.get(name)
            if slot.champion is not None:
                out[name] = f"champion v{slot.champion.version}" + (
                    f"; last load failed: {error}" if error else ""
                )
            elif error:
                out[name] = f"fallback (load failed: {error})"
            else:
                out[name] = "fallback (no champion in the registry yet)"
        return out


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


def _versions(slot: ModelSlot) -> tuple[str | None, str | None]:
    return (
        slot.champion.version if slot.champion else None,
        slot.challenger.version if slot.challenger else None,
    )

"""The models a replica serves, kept in step with the registry's aliases.

Each model has one immutable ModelSlot; a swap replaces the slot in one assignment,
so a request that read it sees one consistent model until it answers. Changes come
from models.events (followed per replica) and from a periodic registry poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import lightgbm as lgb

from libs.common.definitions import Definitions, ModelDefinition
from libs.common.features import CATEGORIES_FILE, CategoryEncoding, model_columns
from libs.common.observability.logging import get_logger
from libs.common.registry import CHALLENGER, CHAMPION, ModelIntegrityError
from libs.common.registry.mlflow import COMPANION_FILE
from libs.common.resilience import Policy
from libs.common.schemas import ModelChanged, Variant
from services.serve.adapters.base import ModelSource
from services.serve.core.companion import companion_predictor
from services.serve.core.predict import ModelSlot, Predictor, ServedModel
from services.serve.core.traffic import TrafficSettings, traffic_split
from services.serve.errors import InvalidTraffic, ModelMismatch, UnknownModel
from services.serve.schemas import ModelsView, ServedModelInfo

log = get_logger(__name__)


class ModelCatalog:
    """Champion (and challenger) of every model in the definitions, loaded from a source."""

    def __init__(
        self,
        definitions: Definitions,
        source: ModelSource,
        *,
        challenger_fraction: float,
        policy: Policy | None = None,
        on_served: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        self.definitions = definitions
        self._on_served = on_served  # (model, variant, version) after every swap
        self.challenger_fraction = challenger_fraction
        self._source = source
        # Registry calls get a timeout, retries and a breaker: a slow or down registry
        # leaves the current models serving (or the fallback) and never blocks a request.
        self._policy = policy or Policy("mlflow", timeout_s=10.0, attempts=2, reset_s=30.0)
        self._slots: dict[str, ModelSlot] = {m.name: ModelSlot() for m in definitions.models}
        self._locks = {m.name: asyncio.Lock() for m in definitions.models}
        self._load_errors: dict[str, str] = {}
        # Per model the registry's traffic tags over the setting; read on every refresh.
        self._traffic = {m.name: TrafficSettings(challenger_fraction) for m in definitions.models}

    @property
    def registry_state(self) -> str:
        """The registry breaker: closed | half_open | open."""
        return self._policy.state

    def slot(self, name: str) -> ModelSlot:
        return self._slots[name]

    def traffic(self, name: str) -> TrafficSettings:
        """The model's effective challenger fraction and shadow mode."""
        return self._traffic[name]

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
                fraction, shadow = await self._policy.call_blocking(
                    self._source.traffic_settings, name
                )
                traffic = TrafficSettings(
                    self.challenger_fraction if fraction is None else fraction, shadow
                )
                if traffic != self._traffic[name]:
                    log.info(
                        "traffic_changed", model=name, before=self._traffic[name], after=traffic
                    )
                    self._traffic[name] = traffic
                champion_v = await self._policy.call_blocking(
                    self._source.version_of, name, CHAMPION
                )
                challenger_v = None
                if champion_v is not None:
                    challenger_v = await self._policy.call_blocking(
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
            if self._on_served is not None:
                champion_v, challenger_v = _versions(new)
                self._on_served(name, "champion", champion_v)
                self._on_served(name, "challenger", challenger_v)
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
        # Loading can take longer than a metadata call: its own, longer timeout.
        booster = await asyncio.wait_for(
            asyncio.to_thread(self._source.load_booster, model.name, version), timeout=120
        )
        predictor = Predictor.from_booster(
            booster,
            model_columns(model),
            await self._encoding(model, version),
            categorical=[
                c
                for ref, c in zip(model.features, model_columns(model), strict=True)
                if self.definitions.is_categorical(ref)
            ],
        )
        # The companion (serve's first fallback) comes with the version; a version
        # without one (older, or trained with it disabled) serves without. An unreadable
        # registry fails the load like the booster's would (retried at the next refresh);
        # a companion that is corrupt or does not fit the model is left out.
        companion = None
        try:
            text = await self._policy.call_blocking(
                self._source.read_file, model.name, version, COMPANION_FILE
            )
            if text is not None:
                companion = companion_predictor(text, predictor)
        except (ModelIntegrityError, ModelMismatch, lgb.basic.LightGBMError) as exc:
            log.error("companion_unusable", model=model.name, version=version, error=repr(exc))
        return ServedModel(
            model.name, version, variant, predictor, datetime.now(UTC), companion=companion
        )

    async def _encoding(self, model: ModelDefinition, version: str) -> CategoryEncoding:
        """The version's category codes (categories.json); none stored: no categorical inputs.

        Read only for a model with categorical inputs: the others never stored one.
        """
        if not any(self.definitions.is_categorical(ref) for ref in model.features):
            return CategoryEncoding()
        text = await self._policy.call_blocking(
            self._source.read_file, model.name, version, CATEGORIES_FILE
        )
        return CategoryEncoding.from_json(text)

    async def set_traffic(
        self, model: str, *, challenger_fraction: float | None, shadow: bool | None
    ) -> ModelsView:
        """Store a model's challenger fraction and shadow mode in the registry, follow them.

        None leaves a setting as it is. The registry's tags are durable and shared, so
        every replica picks them up at its next refresh; the caller publishes a
        `traffic_changed` ModelChanged so that happens at once.

        Raises:
            UnknownModel: the definitions declare no such model.
            InvalidTraffic: the fraction is not a number within 0..1.
            DependencyUnavailable: the registry did not take the write.
        """
        if model not in self._slots:
            raise UnknownModel(f"model {model[:64]!r} is not defined; known: {sorted(self._slots)}")
        if challenger_fraction is not None and not 0.0 <= challenger_fraction <= 1.0:
            raise InvalidTraffic(
                f"challenger_fraction must be within 0..1, got {challenger_fraction!r}"
            )
        await self._policy.call_blocking(
            self._source.set_traffic_settings, model, challenger_fraction, shadow
        )
        await self.refresh(model)
        log.info("traffic_set", model=model, traffic=self._traffic[model])
        return self.view()

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
        settings = self._traffic
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
                settings[name].challenger_fraction,
                has_champion=slot.champion is not None,
                has_challenger=slot.challenger is not None,
                shadow=settings[name].shadow,
            )
        return ModelsView(
            models=infos,
            traffic=traffic,
            challenger_fraction={n: t.challenger_fraction for n, t in settings.items()},
            shadow={n: t.shadow for n, t in settings.items()},
        )

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

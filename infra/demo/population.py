"""The synthetic entities: who reports when, and the sources whose truth labels them."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from infra.demo.timeline import OUTAGE_AT, OUTAGE_FOR
from libs.common.definitions import Definitions, ModelDefinition
from libs.common.synthetic import SyntheticConfig, SyntheticSource


@dataclass
class _Schedule:
    entity_id: str
    next_at: float
    reports: int = 0


@dataclass
class Due:
    reports: list[str] = field(default_factory=list)
    born: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


class Population:
    """Who reports when: `size` entities, each reporting about every `step_s` for `life`
    reports, then replaced by a new one (so the mix of ages stays the same).

    The intervals are those of the bootstrap history (`SyntheticSource.history`): the
    step plus the difference of two jitters uniform over half a step.
    """

    def __init__(
        self, size: int, life: int, step_s: float, prefix: str, rng: random.Random
    ) -> None:
        self.size, self.life, self.step_s, self.prefix = size, life, step_s, prefix
        self._rng = rng
        self._serial = 0
        self.schedules: list[_Schedule] = []

    def _new_id(self) -> str:
        self._serial += 1
        return f"{self.prefix}-{self._serial}"

    def _interval(self) -> float:
        half = self.step_s / 2
        return self.step_s + self._rng.uniform(0, half) - self._rng.uniform(0, half)

    def seed(self, now: float) -> list[tuple[float, str]]:
        """Create the entities with ages spread evenly over a life; returns their past
        reports, (time, entity id) in time order, all before `now`."""
        past: list[tuple[float, str]] = []
        for i in range(self.size):
            age = i * self.life // self.size
            s = _Schedule(self._new_id(), now, age)
            at = now - self._rng.uniform(1.0, self.step_s)
            for _ in range(age):
                past.append((at, s.entity_id))
                at -= self._interval()
            self.schedules.append(s)
        past.sort()
        return past

    def resume(self, now: float) -> None:
        """Spread the next reports over one step from `now` (the live start)."""
        for s in self.schedules:
            s.next_at = now + self._rng.uniform(0, self.step_s)

    def due(self, now: float) -> Due:
        """The entities whose report is due at `now`, advancing their schedules; an entity
        whose life is over retires after this report and a new one is born."""
        out = Due()
        for i, s in enumerate(self.schedules):
            if s.next_at > now:
                continue
            out.reports.append(s.entity_id)
            s.reports += 1
            s.next_at += self._interval()
            if s.reports >= self.life:
                out.retired.append(s.entity_id)
                born = _Schedule(self._new_id(), s.next_at)
                out.born.append(born.entity_id)
                self.schedules[i] = born
        return out


def synthetic_sources(
    definitions: Definitions, model: ModelDefinition, bootstrap_seed: int
) -> tuple[list[SyntheticSource], SyntheticSource, list[SyntheticSource]]:
    """One synthetic source per defined source, with the bad records, late events,
    duplicates and outage of the demo.

    Args:
        definitions: the definitions file's sources, views and models.
        model: the model the demo serves and labels.
        bootstrap_seed: the bootstrap's seed; the model's sources use it so that their
            truth is the one the bootstrap model learnt.

    Returns:
        Every source; the one whose truth labels the answers (the model's first);
        the model's sources, whose truth the drift flips.
    """
    model_sources = list(dict.fromkeys(v.source for v in definitions.views_of_model(model)))
    config = SyntheticConfig(
        entities=0,
        bad_fraction=0.03,
        late_fraction=0.02,
        duplicate_fraction=0.02,
        outage_start_s=OUTAGE_AT,
        outage_duration_s=OUTAGE_FOR,
    )
    sources = []
    for j, src in enumerate(definitions.sources):
        # The model's sources use the bootstrap's seeds (seed + index among the model's
        # sources): the same truth the bootstrap model learnt.
        i = model_sources.index(src.name) if src.name in model_sources else 100 + j
        sources.append(SyntheticSource(src, dataclasses.replace(config, seed=bootstrap_seed + i)))
    labeller = next(s for s in sources if s.source.name == model_sources[0])
    truth_sources = [s for s in sources if s.source.name in model_sources]
    return sources, labeller, truth_sources

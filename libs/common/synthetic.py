"""A synthetic source for any source definition, with a known ground truth.

Entities drift through random walks over the source's fields; the probability of a
positive outcome is a fixed logistic function of their current values. Knobs add
bad records, late events, duplicates, an outage and an abrupt concept drift (the
ground-truth weights flip sign). Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from libs.common.definitions import FieldType, SourceDefinition

RecordKind = Literal["ok", "bad", "late", "duplicate"]


@dataclass(frozen=True)
class SyntheticConfig:
    entities: int = 50
    rate_per_s: float = 20.0
    bad_fraction: float = 0.0
    late_fraction: float = 0.0
    duplicate_fraction: float = 0.0
    outage_start_s: float | None = None
    outage_duration_s: float = 0.0
    drift_at_s: float | None = None
    late_by_s: float = 7200.0
    seed: int = 0


@dataclass
class SyntheticRecord:
    kind: RecordKind
    payload: dict[str, Any] | str  # str: a malformed body, sent as it is
    entity_id: str


@dataclass
class _Entity:
    entity_id: str
    values: dict[str, float] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)


class SyntheticSource:
    """Signals and outcomes for one source definition.

    Args:
        source: the source definition whose fields are generated.
        config: rates and knobs.
        entity_prefix: entity ids are f"{entity_prefix}-{i}".
    """

    def __init__(
        self,
        source: SourceDefinition,
        config: SyntheticConfig | None = None,
        *,
        entity_prefix: str | None = None,
    ) -> None:
        self.source = source
        self.config = config or SyntheticConfig()
        self._rng = random.Random(self.config.seed)
        prefix = entity_prefix or source.entity
        self._weights: dict[str, float] = {}
        self._numeric = [n for n, s in source.fields.items() if s.type != FieldType.str]
        self._categorical = [
            n for n, s in source.fields.items() if s.type == FieldType.str and s.allowed
        ]
        for name in self._numeric + self._categorical:
            self._weights[name] = self._rng.choice([-1.0, 1.0]) * self._rng.uniform(1.0, 2.0)
        self.entities = [_Entity(f"{prefix}-{i}") for i in range(self.config.entities)]
        for e in self.entities:
            for name in self._numeric:
                e.values[name] = self._rng.gauss(0.0, 1.0)
            for name in self._categorical:
                e.categories[name] = self._pick_category(name, e)
        self._last: SyntheticRecord | None = None
        self.drifted = False

    # ground truth -----------------------------------------------------------------
    def _score(self, e: _Entity) -> float:
        sign = -1.0 if self.drifted else 1.0
        z = sum(self._weights[n] * e.values[n] for n in self._numeric)
        for n in self._categorical:
            allowed = self.source.fields[n].allowed or []
            z += self._weights[n] * (1.0 if e.categories[n] == allowed[-1] else 0.0)
        return sign * z

    def probability(self, entity_id: str) -> float:
        """The true probability of a positive outcome for the entity right now."""
        e = self._entity(entity_id)
        return 1.0 / (1.0 + math.exp(-self._score(e)))

    def _pick_category(self, name: str, e: _Entity) -> str:
        allowed = self.source.fields[name].allowed or ["x"]
        # Entities with high numeric values report the last category more often.
        bias = sum(e.values.values()) / max(1, len(e.values))
        p_last = 1.0 / (1.0 + math.exp(-bias))
        return allowed[-1] if self._rng.random() < p_last * 0.5 else self._rng.choice(allowed)

    def _entity(self, entity_id: str) -> _Entity:
        for e in self.entities:
            if e.entity_id == entity_id:
                return e
        raise KeyError(entity_id)

    # generation ---------------------------------------------------------------------
    def _step(self, e: _Entity) -> None:
        for n in self._numeric:
            e.values[n] = 0.9 * e.values[n] + self._rng.gauss(0.0, 0.45)
        for n in self._categorical:
            if self._rng.random() < 0.2:
                e.categories[n] = self._pick_category(n, e)

    def _field_value(self, name: str, e: _Entity) -> Any:
        spec = self.source.fields[name]
        if spec.type == FieldType.str:
            return e.categories.get(name) or "x"
        lo = spec.min if spec.min is not None else -1e9
        hi = spec.max if spec.max is not None else 1e9
        centre = (lo + hi) / 2 if spec.min is not None and spec.max is not None else 50.0
        scale = (hi - lo) / 8 if spec.min is not None and spec.max is not None else 10.0
        raw = min(hi, max(lo, centre + scale * e.values[name]))
        if spec.type == FieldType.int:
            return round(raw)
        if spec.type == FieldType.bool:
            return e.values[name] > 0
        return round(raw, 4)

    def signal(self, e: _Entity, at: datetime) -> dict[str, Any]:
        return {
            "source": self.source.name,
            "entity_id": e.entity_id,
            "event_time": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "fields": {n: self._field_value(n, e) for n in self.source.fields},
            "schema_version": self.source.version,
        }

    def _bad(self, e: _Entity, at: datetime) -> dict[str, Any] | str:
        good = self.signal(e, at)
        kind = self._rng.randrange(5)
        if kind == 0:
            return json.dumps(good)[: self._rng.randrange(1, 20)]  # truncated JSON
        if kind == 1:
            good["fields"].pop(next(iter(self.source.fields)))
        elif kind == 2:
            good["fields"][next(iter(self.source.fields))] = [1, 2, 3]
        elif kind == 3:
            good["source"] = "no_such_source"
        else:
            good["event_time"] = "yesterday-ish"
        return good

    def in_outage(self, elapsed_s: float) -> bool:
        c = self.config
        return c.outage_start_s is not None and (
            c.outage_start_s <= elapsed_s < c.outage_start_s + c.outage_duration_s
        )

    def next_record(self, at: datetime, elapsed_s: float = 0.0) -> SyntheticRecord:
        """The next record at time `at`; `elapsed_s` drives the drift switch."""
        c = self.config
        if c.drift_at_s is not None and elapsed_s >= c.drift_at_s:
            self.drifted = True
        r = self._rng.random()
        if self._last is not None and r < c.duplicate_fraction:
            return SyntheticRecord("duplicate", self._last.payload, self._last.entity_id)
        e = self._rng.choice(self.entities)
        r -= c.duplicate_fraction
        if r < c.bad_fraction:
            return SyntheticRecord("bad", self._bad(e, at), e.entity_id)
        r -= c.bad_fraction
        if r < c.late_fraction:
            late = at - timedelta(seconds=c.late_by_s)
            return SyntheticRecord("late", self.signal(e, late), e.entity_id)
        self._step(e)
        rec = SyntheticRecord("ok", self.signal(e, at), e.entity_id)
        self._last = rec
        return rec

    # a changing population, reporting on a schedule (the demo) ------------------------
    def add_entity(self, entity_id: str) -> None:
        """A new entity, drawn as the first ones were; it reports from now on."""
        e = _Entity(entity_id)
        for name in self._numeric:
            e.values[name] = self._rng.gauss(0.0, 1.0)
        for name in self._categorical:
            e.categories[name] = self._pick_category(name, e)
        self.entities.append(e)

    def remove_entity(self, entity_id: str) -> None:
        """The entity stops reporting (its features stay where they were written)."""
        self.entities.remove(self._entity(entity_id))

    def report(self, entity_id: str, at: datetime) -> list[SyntheticRecord]:
        """The entity's next report at `at` (its state moves one step, as in `history`),
        then, drawn by the config's fractions, a malformed record, the report stamped
        `late_by_s` earlier, and a resend of the report (a duplicate)."""
        c = self.config
        e = self._entity(entity_id)
        self._step(e)
        ok = SyntheticRecord("ok", self.signal(e, at), entity_id)
        out = [ok]
        if self._rng.random() < c.bad_fraction:
            out.append(SyntheticRecord("bad", self._bad(e, at), entity_id))
        if self._rng.random() < c.late_fraction:
            late = at - timedelta(seconds=c.late_by_s)
            out.append(SyntheticRecord("late", self.signal(e, late), entity_id))
        if self._rng.random() < c.duplicate_fraction:
            out.append(SyntheticRecord("duplicate", ok.payload, entity_id))
        self._last = ok
        return out

    def decision(self, entity_id: str) -> float:
        """The Bayes decision of the truth right now: 1.0 when a positive outcome is at
        least as likely as not, else 0.0 (the label a perfect model would be judged by)."""
        return 1.0 if self.probability(entity_id) >= 0.5 else 0.0

    def outcome(self, entity_id: str, at: datetime, model: str) -> dict[str, Any]:
        """A label drawn from the entity's current true probability."""
        label = 1 if self._rng.random() < self.probability(entity_id) else 0
        return {
            "model": model,
            "entity_id": entity_id,
            "event_time": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "label": label,
        }

    def history(
        self, *, end: datetime, steps: int, step_s: float, model: str, label_every: int = 1
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """A clean past: ("signal", payload) and ("outcome", payload) pairs in time order.

        Every entity reports once per step; an outcome follows every `label_every`
        steps, stamped at the signal's time (features as of then are the truth's input).
        """
        start = end - timedelta(seconds=steps * step_s)
        for i in range(steps):
            at = start + timedelta(seconds=i * step_s)
            for e in self.entities:
                self._step(e)
                jitter = timedelta(seconds=self._rng.uniform(0, step_s * 0.5))
                yield "signal", self.signal(e, at + jitter)
                if i % label_every == 0:
                    yield "outcome", self.outcome(e.entity_id, at + jitter, model)

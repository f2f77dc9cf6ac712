"""What ingest has seen of each source's schema drift since it started, and when to say so.

The state behind `GET /v1/sources` and the `schema.events` topic. Detection is pure
(core/schema_drift.py); this keeps per (source, kind, field, observed) the count and
the first and last sightings, and turns them into `SchemaDriftDetected` events: one
at the first sighting, then at most one per `interval_s` while sightings go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from libs.common.definitions import Definitions
from libs.common.observability.metrics import SCHEMA_DRIFT
from libs.common.schemas import SchemaDriftDetected, stable_id
from services.ingest.core._describe import iso
from services.ingest.core.schema_drift import DriftKey, DriftTally, is_breaking

# Field name under which a source's drift beyond `max_keys_per_source` distinct keys is
# counted, so a sender inventing field names cannot grow this state without bound.
OTHER_FIELDS = "*"


@dataclass
class DriftRecord:
    """One (source, kind, field, observed) seen since ingest started."""

    total: int
    first_seen: datetime
    last_seen: datetime
    pending: int = 0  # sightings not yet reported by an event
    last_event: datetime | None = None


class SchemaDriftLog:
    """Counts, sightings and rate-limited events of schema drift per source.

    Args:
        definitions: the registered sources (their versions go in the events).
        interval_s: least time between two events of the same key.
        max_keys_per_source: distinct keys kept per source; more go under field "*".
    """

    def __init__(
        self, definitions: Definitions, *, interval_s: float, max_keys_per_source: int = 256
    ) -> None:
        self._versions = {s.name: s.version for s in definitions.sources}
        self._interval = timedelta(seconds=interval_s)
        self._max_keys = max_keys_per_source
        self._records: dict[DriftKey, DriftRecord] = {}
        self._keys_of: dict[str, int] = {}

    def record(self, tally: DriftTally, now: datetime) -> list[SchemaDriftDetected]:
        """Fold a batch's tally in; return the events now due (marked as sent).

        If publishing them fails, hand them to `rearm` so the next sighting retries.
        """
        due: list[SchemaDriftDetected] = []
        by_kind: dict[tuple[str, str], int] = {}
        for key, n in tally.items():
            key = self._bounded(key)
            source, kind = key[0], key[1]
            by_kind[(source, kind)] = by_kind.get((source, kind), 0) + n
            rec = self._records.get(key)
            if rec is None:
                rec = self._records[key] = DriftRecord(0, now, now)
                self._keys_of[source] = self._keys_of.get(source, 0) + 1
            rec.total += n
            rec.pending += n
            rec.last_seen = now
            if rec.last_event is None or now - rec.last_event >= self._interval:
                due.append(self._event(key, rec))
                rec.pending = 0
                rec.last_event = now
        for (source, kind), n in by_kind.items():
            SCHEMA_DRIFT.labels(source, kind).inc(n)
        return due

    def rearm(self, events: list[SchemaDriftDetected]) -> None:
        """Events that could not be published: due again at their key's next sighting."""
        for e in events:
            rec = self._records.get((e.source, e.kind, e.field, e.observed))
            if rec is not None:
                rec.pending += e.count
                rec.last_event = None

    def report(self, source: str) -> dict[str, Any]:
        """The source's drift as `GET /v1/sources` shows it: totals by kind, then each key."""
        keys = sorted(k for k in self._records if k[0] == source)
        by_kind: dict[str, int] = {}
        seen = []
        for key in keys:
            rec = self._records[key]
            by_kind[key[1]] = by_kind.get(key[1], 0) + rec.total
            seen.append(
                {
                    "kind": key[1],
                    "field": key[2],
                    "observed": key[3],
                    "breaking": is_breaking(key[1]),
                    "count": rec.total,
                    "first_seen": iso(rec.first_seen),
                    "last_seen": iso(rec.last_seen),
                }
            )
        return {"counts": by_kind, "observed": seen}

    def _bounded(self, key: DriftKey) -> DriftKey:
        if key in self._records or self._keys_of.get(key[0], 0) < self._max_keys:
            return key
        return (key[0], key[1], OTHER_FIELDS, key[3])

    def _event(self, key: DriftKey, rec: DriftRecord) -> SchemaDriftDetected:
        source, kind, field, observed = key
        return SchemaDriftDetected(
            # The same report published twice (a retried batch) keeps its id.
            event_id=stable_id("schema_drift", *key, rec.total),
            event_time=rec.last_seen,
            source=source,
            source_version=self._versions[source],
            kind=kind,  # type: ignore[arg-type]  # one of schema_drift.KINDS
            field=field,
            observed=observed,
            breaking=is_breaking(kind),
            count=rec.pending,
            total=rec.total,
            first_seen=rec.first_seen,
            last_seen=rec.last_seen,
        )

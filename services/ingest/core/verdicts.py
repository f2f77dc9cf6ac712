"""Verdicts on a batch: which records were accepted and which rejected, and why.

`judge` runs a validator over records and records what happened; the handler then
publishes the accepted messages and the dead letters (STYLE.md section 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from libs.common.errors import RecordInvalid
from libs.common.schemas import Message
from services.ingest.core.batch import RecordItem
from services.ingest.core.reasons import INVALID_ENVELOPE
from services.ingest.core.validation import check_size

Validator = Callable[[Any], Message]


# Not frozen: one is built per record of every batch, and a frozen dataclass's
# __init__ (object.__setattr__ per field) cost ingest about 5% of its samples (issue 9).
@dataclass(slots=True)
class Accepted:
    index: int
    event_id: str


@dataclass(slots=True)
class Rejected:
    index: int
    reason: str
    detail: str


@dataclass
class Judged:
    """Records split into valid messages, rejections and duplicates, each with its item."""

    valid: list[tuple[RecordItem, Message]] = field(default_factory=list)
    rejected: list[tuple[RecordItem, RecordInvalid]] = field(default_factory=list)
    duplicates: list[tuple[RecordItem, Message]] = field(default_factory=list)


@dataclass
class BatchResult:
    """What the client is told: per-record acceptance or reason, in request order.

    `duplicates` were valid but already accepted within the dedup window (or earlier
    in the same batch): not published again, and not rejections.
    """

    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[Accepted] = field(default_factory=list)

    @classmethod
    def of(cls, judged: Judged) -> BatchResult:
        return cls(
            accepted=[Accepted(item.index, m.event_id) for item, m in judged.valid],
            rejected=[Rejected(item.index, e.reason, e.detail) for item, e in judged.rejected],
            duplicates=[Accepted(item.index, m.event_id) for item, m in judged.duplicates],
        )

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "accepted": [{"index": a.index, "event_id": a.event_id} for a in self.accepted],
            "rejected": [
                {"index": r.index, "reason": r.reason, "detail": r.detail} for r in self.rejected
            ],
            "duplicates": [{"index": d.index, "event_id": d.event_id} for d in self.duplicates],
        }


def judge(items: Iterable[RecordItem], validate: Validator, *, max_record_bytes: int) -> Judged:
    """Validate each record; a RecordInvalid becomes a rejection, never an exception.

    Args:
        items: records with their original bytes.
        validate: e.g. `lambda r: validate_signal(r, definitions, now)`.
        max_record_bytes: larger records are rejected as too_large before parsing.
    """
    judged = Judged()
    for item in items:
        try:
            check_size(item.raw, max_record_bytes)
            judged.valid.append((item, validate(item.record)))
        except RecordInvalid as exc:
            judged.rejected.append((item, exc))
        except RecursionError:
            # JSON nested deeper than Python can print or validate (orjson parses up to
            # 1,024 levels): this record is refused, its neighbours are still judged.
            judged.rejected.append(
                (item, RecordInvalid(INVALID_ENVELOPE, detail="value nested too deeply"))
            )
    return judged

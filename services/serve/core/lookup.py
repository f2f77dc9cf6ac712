"""Online feature lookup: which views a read covers, and the answer built from what the
store returned (the `get_online_features` of signalops). Pure: values in, values out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from libs.common.definitions import Definitions
from services.serve.errors import UnknownView
from services.serve.schemas import EntityFeatures, OnlineValue, ViewFeatures


class StoredVectorLike(Protocol):
    """A feature vector as the online store returns it (StoredVector)."""

    @property
    def values(self) -> Mapping[str, object]: ...

    @property
    def as_of(self) -> float: ...

    @property
    def updated_at(self) -> float: ...


def select_views(
    definitions: Definitions, requested: Sequence[str] | None = None
) -> list[tuple[str, int]]:
    """The (view, version) pairs a read covers: all views, or the requested ones.

    Args:
        definitions: the views and their current versions.
        requested: view names (duplicates ignored, first order kept); None or empty
            means every view in definitions order.

    Raises:
        UnknownView: naming the unknown views and the known ones.
    """
    known = {v.name: v.version for v in definitions.feature_views}
    if not requested:
        return list(known.items())
    names = list(dict.fromkeys(requested))
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(repr(n[:80]) for n in unknown[:5])
        raise UnknownView(f"no feature view {shown}; known views: {sorted(known)}")
    return [(n, known[n]) for n in names]


def _value(v: object) -> OnlineValue:
    """A stored value as answered: numbers and strings as they are (a categorical is
    never coerced to float), non-finite numbers as null (JSON has no NaN).
    """
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):  # not written by the features service; keep it readable
        return str(v).lower()
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return str(v)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def entity_features(
    entity_id: str,
    views: Sequence[tuple[str, int]],
    stored: Mapping[str, StoredVectorLike],
    now: float,
) -> EntityFeatures:
    """The answer for one entity from the vectors the store returned for it.

    Args:
        entity_id: the entity read.
        views: the (view, version) pairs that were read, in answer order.
        stored: view name -> vector, for the views that hold one.
        now: epoch seconds; freshness and age are measured from it (never negative,
            as serve's clock may lag the writer's).

    Returns:
        `found` when at least one view holds a vector; the others in `missing_views`.
    """
    found: dict[str, ViewFeatures] = {}
    missing: list[str] = []
    for name, version in views:
        vec = stored.get(name)
        if vec is None:
            missing.append(name)
            continue
        found[name] = ViewFeatures(
            version=version,
            values={k: _value(v) for k, v in vec.values.items()},
            as_of=_utc(vec.as_of),
            updated_at=_utc(vec.updated_at),
            freshness_s=round(max(now - vec.updated_at, 0.0), 3),
            age_s=round(max(now - vec.as_of, 0.0), 3),
        )
    return EntityFeatures(
        entity_id=entity_id, found=bool(found), views=found, missing_views=missing
    )

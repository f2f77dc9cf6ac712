"""The prediction cache: a model version's score for exactly the inputs it saw.

The key holds everything the score depends on: model name, version and variant, the
entity, and per view the vector's version, event time (`as_of`) and write time
(`updated_at`), plus supplied features. A new version or any rewrite of a vector
makes a new key, so a hit can never be a stale model's or stale features' answer.
The write time is in the key because a late event rewrites a vector's values while
its `as_of` (the newest event time) stays the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cachetools import Cache, LRUCache, TTLCache

ViewStamp = tuple[str, int, float, float]
"""(view name, view version, as_of, updated_at) of a vector a score used."""


@dataclass(frozen=True)
class PredictionKey:
    """Everything one cached score depends on."""

    model: str
    version: str
    variant: str
    entity_id: str
    views: tuple[ViewStamp, ...]
    supplied: tuple[tuple[str, float | None], ...]


def prediction_key(
    *,
    model: str,
    version: str,
    variant: str,
    entity_id: str,
    views: Mapping[str, tuple[int, float, float]],
    supplied: Mapping[str, float | None] | None,
) -> PredictionKey:
    """The cache key of one score.

    Args:
        model, version, variant: the served model that scores.
        entity_id: the entity scored.
        views: view name -> (view version, as_of, updated_at) of each vector used.
        supplied: features the request supplied ('view.feature' -> value), if any.
    """
    return PredictionKey(
        model=model,
        version=version,
        variant=variant,
        entity_id=entity_id,
        views=tuple(sorted((v, *stamp) for v, stamp in views.items())),
        supplied=tuple(sorted((supplied or {}).items())),
    )


class PredictionCache:
    """A bounded LRU (optionally with a TTL) of scores by `PredictionKey`, with hit counts.

    Args:
        size: most scores kept; 0 turns the cache off.
        ttl_s: forget a score after this many seconds; 0 keeps it until evicted.
    """

    def __init__(self, size: int, *, ttl_s: float = 0.0) -> None:
        self.enabled = size > 0
        self._scores: Cache[PredictionKey, float] = (
            TTLCache(maxsize=size, ttl=ttl_s) if ttl_s > 0 else LRUCache(maxsize=max(size, 1))
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: PredictionKey) -> float | None:
        """The cached score of `key`, counting a hit or a miss; None when off or absent."""
        if not self.enabled:
            return None
        score = self._scores.get(key)
        if score is None:
            self.misses += 1
        else:
            self.hits += 1
        return score

    def put(self, key: PredictionKey, score: float) -> None:
        if self.enabled:
            self._scores[key] = score

    def __len__(self) -> int:
        return len(self._scores)

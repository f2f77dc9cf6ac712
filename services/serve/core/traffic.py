"""Champion/challenger split and shadow mode: who answers an entity, who scores beside it.

A stable hash of the entity id picks the variant, so the same entity always sees
the same variant for a given fraction and labels of an entity join to one model's
predictions. In shadow mode the champion answers everyone and the challenger scores
the same rows for the log only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from libs.common.schemas import Variant


@dataclass(frozen=True)
class TrafficSettings:
    """One model's effective traffic settings (registry tags over the serve setting)."""

    challenger_fraction: float
    shadow: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.challenger_fraction <= 1.0:
            raise ValueError(
                f"challenger_fraction must be within 0..1, got {self.challenger_fraction}"
            )


@dataclass(frozen=True)
class Routing:
    """Which variant answers a request, and which one scores it in the shadow (if any)."""

    answer: Variant
    shadow: Variant | None = None


def bucket(entity_id: str) -> float:
    """A deterministic number in [0, 1) for an entity id (same on every replica)."""
    digest = hashlib.blake2b(entity_id.encode(errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_variant(entity_id: str, challenger_fraction: float, *, has_challenger: bool) -> Variant:
    """'challenger' for the entities whose bucket falls below the fraction, else 'champion'."""
    if has_challenger and bucket(entity_id) < challenger_fraction:
        return "challenger"
    return "champion"


def route(entity_id: str, traffic: TrafficSettings, *, has_challenger: bool) -> Routing:
    """Who answers `entity_id` and who scores it in the shadow.

    Shadow mode overrides the split: the champion answers every entity and a loaded
    challenger scores every row beside it, never returned.
    """
    if traffic.shadow:
        return Routing("champion", "challenger" if has_challenger else None)
    return Routing(
        choose_variant(entity_id, traffic.challenger_fraction, has_challenger=has_challenger)
    )


def traffic_split(
    challenger_fraction: float,
    *,
    has_champion: bool,
    has_challenger: bool,
    shadow: bool = False,
) -> dict[str, float]:
    """The expected share of answers per variant, as `GET /v1/models` reports it.

    A shadow challenger answers nobody, so it has no share.
    """
    if not has_champion:
        return {"fallback": 1.0}
    if not has_challenger or shadow:
        return {"champion": 1.0}
    return {
        "champion": round(1.0 - challenger_fraction, 6),
        "challenger": round(challenger_fraction, 6),
    }

"""Champion/challenger split: a stable hash of the entity id picks the variant.

The same entity always sees the same variant for a given fraction, so labels of
an entity join to one model's predictions.
"""

from __future__ import annotations

import hashlib

from libs.common.schemas import Variant


def bucket(entity_id: str) -> float:
    """A deterministic number in [0, 1) for an entity id (same on every replica)."""
    digest = hashlib.blake2b(entity_id.encode(errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_variant(entity_id: str, challenger_fraction: float, *, has_challenger: bool) -> Variant:
    """'challenger' for the entities whose bucket falls below the fraction, else 'champion'."""
    if has_challenger and bucket(entity_id) < challenger_fraction:
        return "challenger"
    return "champion"


def traffic_split(
    challenger_fraction: float, *, has_champion: bool, has_challenger: bool
) -> dict[str, float]:
    """The expected share of entities per variant, as `GET /v1/models` reports it."""
    if not has_champion:
        return {"fallback": 1.0}
    if not has_challenger:
        return {"champion": 1.0}
    return {
        "champion": round(1.0 - challenger_fraction, 6),
        "challenger": round(challenger_fraction, 6),
    }

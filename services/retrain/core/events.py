"""The facts this service announces on the models topic (ModelChanged), built from values."""

from __future__ import annotations

import math
from collections.abc import Mapping

from libs.common.schemas import ModelChanged

CHAMPION = "champion"


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if not math.isnan(float(v))}


def registered(model: str, version: str, metrics: Mapping[str, float], reason: str) -> ModelChanged:
    """A new version exists (not yet serving unless a `promoted` event follows)."""
    return ModelChanged(
        kind="registered",
        model=model,
        version=version,
        alias=None,
        metrics=_finite(metrics),
        reason=reason,
    )


def promoted(model: str, version: str, metrics: Mapping[str, float], reason: str) -> ModelChanged:
    """`version` is the champion now; serve must load it."""
    return ModelChanged(
        kind="promoted",
        model=model,
        version=version,
        alias=CHAMPION,
        metrics=_finite(metrics),
        reason=reason,
    )


def rolled_back(
    model: str, version: str, metrics: Mapping[str, float], reason: str
) -> ModelChanged:
    """The champion went back to `version`; serve must load it."""
    return ModelChanged(
        kind="rolled_back",
        model=model,
        version=version,
        alias=CHAMPION,
        metrics=_finite(metrics),
        reason=reason,
    )

"""The optional retrain schedule: which models are due a scheduled request, and its id.

Pure. A scheduled request's id derives from the model and its slot (the number of
whole periods since the epoch), so every retrain instance that wakes in the same slot
publishes the same request, and the trainer trains it once (requests are tagged on the
version they produced; a redelivered or duplicated id is not trained again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from libs.common.definitions import ModelDefinition
from libs.common.schemas import RetrainModel, stable_id

REQUESTED_BY = "schedule"


def slot_of(every_s: float, now: float) -> int:
    """The schedule slot `now` (epoch seconds) falls in."""
    return math.floor(now / every_s)


def due(
    models: Iterable[ModelDefinition], now: float, last_slot: Mapping[str, int]
) -> list[tuple[RetrainModel, int]]:
    """The scheduled requests due at `now`, each with its slot.

    A model is due when it has a schedule and `now` is in a later slot than the last one
    it was requested in. The first slot seen after a start is not due (a restart must
    not retrain every model at once); the next one is.

    Args:
        models: the model definitions.
        now: epoch seconds.
        last_slot: model name -> the slot of its last scheduled request (or of the start).

    Returns:
        (request, slot) per due model.
    """
    out = []
    for model in models:
        if model.retrain_every_s is None:
            continue
        slot = slot_of(model.retrain_every_s, now)
        if slot <= last_slot.get(model.name, slot):
            continue
        request = RetrainModel(
            event_id=stable_id("schedule", model.name, slot),
            model=model.name,
            reason=f"scheduled every {model.retrain_every_s:g}s",
            requested_by=REQUESTED_BY,
            event_time=datetime.fromtimestamp(slot * model.retrain_every_s, UTC),
        )
        out.append((request, slot))
    return out

"""When the demo's steps come: the sources' outage, the drift, and the loop's end."""

from __future__ import annotations

from collections.abc import Sequence

from infra.demo.accuracy import ROLLING
from infra.demo.state import DemoState
from infra.demo.topics import TopicWatcher

OUTAGE_AT, OUTAGE_FOR = 30.0, 15.0  # live clock
DRIFT_AFTER_LABELS = 1000  # champion answers judged before the drift is injected


def loop_closed(
    *,
    drift_at: float | None,
    events_at: Sequence[float],
    registered_at: Sequence[float],
    post_drift_labels: int,
    refit_labels: int,
    serving_new_labels: int,
    size: int = ROLLING,
) -> bool:
    """True once the platform has answered the drift and the new version has been judged.

    Args:
        drift_at: when the drift was injected (None: not yet).
        events_at: when each drift event since the drift was published.
        registered_at: when each version was registered since the drift.
        post_drift_labels: labels posted since the drift.
        refit_labels: the model's `drift.refit_labels` (the refit's turn must have come).
        serving_new_labels: labels of the version answering now if it is new since the
            drift, else 0.
        size: labels the new version must have been judged by.
    """
    if drift_at is None or not events_at:
        return False
    if post_drift_labels < refit_labels * 1.1:
        return False
    if max(registered_at, default=float("-inf")) < max(events_at):
        return False
    return serving_new_labels >= size


def drift_due(state: DemoState, drift_after: int, elapsed: float) -> bool:
    """True once `drift_after` labels judged the champion and the outage is over."""
    champion = sum(1 for j in state.judged if j.variant == "champion")
    return champion >= drift_after and elapsed >= OUTAGE_AT + OUTAGE_FOR + 5


def loop_closed_now(state: DemoState, watcher: TopicWatcher, refit_labels: int) -> bool:
    """`loop_closed` on what the demo and the topics have seen so far."""
    if state.drift_at is None or state.live_wall is None:
        return False
    drift_wall = state.live_wall + state.drift_at
    events = [
        e.produced_at.timestamp() for e in watcher.drift if e.produced_at.timestamp() >= drift_wall
    ]
    registered = [
        m.produced_at.timestamp()
        for m in watcher.models
        if m.kind == "registered" and m.produced_at.timestamp() >= drift_wall
    ]
    post = [j for j in state.judged if j.at >= state.drift_at]
    old = {j.version for j in state.judged if j.at < state.drift_at}
    serving = next((j.version for j in reversed(post) if j.variant == "champion"), None)
    serving_new = (
        sum(1 for j in post if j.version == serving) if serving and serving not in old else 0
    )
    return loop_closed(
        drift_at=state.drift_at,
        events_at=events,
        registered_at=registered,
        post_drift_labels=len(post),
        refit_labels=refit_labels,
        serving_new_labels=serving_new,
    )

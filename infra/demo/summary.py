"""The end summary: accuracy before the drift, right after it and once a new version
serves, and when each step of the loop came."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from infra.demo.accuracy import ROLLING, Judged
from infra.demo.state import DemoState
from infra.demo.topics import TopicWatcher


@dataclass(frozen=True)
class DemoSummary:
    """Accuracy before the drift, right after it (the old version), and after the new
    version serves; `None` where that phase never came."""

    before: float | None
    before_n: int
    right_after: float | None
    right_after_n: int
    after: float | None
    after_n: int
    new_version: str | None  # the first version that answered after the drift
    new_version_at: float | None


def _mean(xs: Sequence[Judged]) -> float | None:
    return sum(j.correct for j in xs) / len(xs) if xs else None


def summarise(judged: Sequence[Judged], drift_at: float | None, size: int = ROLLING) -> DemoSummary:
    """The run's three accuracies from the labels the demo posted (model answers only).

    Args:
        judged: every labelled answer, in label order.
        drift_at: when the drift was injected (live clock), None if it was not.
        size: labels in the before and after windows.

    Returns:
        before: the last `size` labels before the drift; right after: every label after
        it judging a version that served before it, until a new version answered; after:
        the last `size` labels judging versions new since the drift.
    """
    models = [j for j in judged if j.variant != "fallback"]
    if drift_at is None:
        before = models[-size:]
        return DemoSummary(_mean(before), len(before), None, 0, None, 0, None, None)
    pre = [j for j in models if j.at < drift_at]
    old = {j.version for j in pre}
    post = [j for j in models if j.at >= drift_at]
    first_new = next((j for j in post if j.version not in old), None)
    until = first_new.at if first_new is not None else float("inf")
    right_after = [j for j in post if j.version in old and j.at < until]
    after = [j for j in post if j.version not in old][-size:]
    return DemoSummary(
        _mean(pre[-size:]),
        len(pre[-size:]),
        _mean(right_after),
        len(right_after),
        _mean(after),
        len(after),
        first_new.version if first_new else None,
        first_new.at if first_new else None,
    )


def print_summary(console: Console, state: DemoState, watcher: TopicWatcher) -> None:
    """Print the run's timings and its three accuracies (see `summarise`)."""
    s = summarise(state.judged, state.drift_at)
    if not console.is_terminal:
        console.line()  # the live view's last frame ends without one there

    def acc(value: float | None, n: int) -> str:
        return f"{value:.3f} ({n} labels)" if value is not None else "-"

    def when(at: float) -> str:
        drift = state.drift_at
        after = f" (drift +{at - drift:.1f}s)" if drift is not None and at >= drift else ""
        return f"{at:.1f}s{after}"

    table = Table("", "", box=None, title="signalops demo: summary (seconds on the live clock)")
    table.add_row("labels posted", f"{state.outcomes:,} (about {_rate(state):.0f}/s)")
    table.add_row(
        "drift injected at",
        f"{state.drift_at:.1f}s, the labelling flipped" if state.drift_at is not None else "never",
    )
    for e in watcher.drift:
        if e.produced_at.timestamp() >= state.demo_wall:
            cp = f", change point {state.at(e.change_point):.1f}s" if e.change_point else ""
            table.add_row(
                "drift event at",
                f"{when(state.at(e.produced_at))}: {e.kind} {e.feature} ({e.statistic}) "
                f"on v{e.version}{cp}",
            )
    for m in watcher.models:
        if m.produced_at.timestamp() >= state.demo_wall:
            table.add_row(f"v{m.version} {m.kind} at", when(state.at(m.produced_at)))
    table.add_row(
        "new version serving at",
        f"{when(s.new_version_at)}: v{s.new_version}" if s.new_version_at is not None else "never",
    )
    table.add_row("accuracy before the drift", acc(s.before, s.before_n))
    table.add_row("accuracy right after (old version)", acc(s.right_after, s.right_after_n))
    table.add_row("accuracy after the new version serves", acc(s.after, s.after_n))
    console.print(table)


def _rate(state: DemoState) -> float:
    elapsed = state.elapsed()
    return state.outcomes / elapsed if elapsed > 0 else 0.0

"""The rich live view: the flow, serve, rolling accuracy, drift and model events."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from infra.demo.accuracy import ROLLING, VersionAccuracy
from infra.demo.state import DemoState
from infra.demo.topics import TopicWatcher


def accuracy_table(rows: Sequence[VersionAccuracy], size: int = ROLLING) -> Table:
    """The live view's table: one line per served version and variant."""
    table = Table(
        "version", "variant", "labels", f"accuracy (last {size})", "answered from", "to", box=None
    )
    for r in rows:
        colour = "green" if r.accuracy >= 0.7 else "yellow" if r.accuracy >= 0.5 else "red"
        table.add_row(
            f"v{r.version}",
            r.variant,
            str(r.labels),
            f"[{colour}]{r.accuracy:.3f}[/{colour}]",
            f"{r.first_at:.0f}s",
            f"{r.last_at:.0f}s",
        )
    return table


def render(state: DemoState, watcher: TopicWatcher) -> Group:
    """One frame of the live view from what the demo and the topics have seen."""
    elapsed = state.elapsed()
    outage = state.outage
    flow = Table.grid(padding=(0, 2))
    flow.add_row(
        "live clock",
        f"{elapsed:.0f}s ({state.phase})",
        "source",
        "[red]OUTAGE[/red]" if outage else "[green]sending[/green]",
    )
    flow.add_row(
        "signals sent",
        str(sum(state.sent.values())),
        "labelling",
        f"[yellow]drifted at {state.drift_at:.0f}s[/yellow]"
        if state.drift_at is not None
        else "as the champion learnt",
    )
    flow.add_row(
        "accepted",
        str(state.accepted),
        "rejected",
        ", ".join(f"{k}={v}" for k, v in state.rejected.most_common(4)) or "0",
    )
    flow.add_row(
        "late sent", str(state.sent["late"]), "duplicates sent", str(state.sent["duplicate"])
    )
    flow.add_row("labels posted", str(state.outcomes), "errors", _counts(state.errors))
    lat = sorted(state.latencies)
    p50 = statistics.median(lat) if lat else float("nan")
    p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
    fresh = statistics.median(state.freshness) if state.freshness else float("nan")
    serve = Table.grid(padding=(0, 2))
    serve.add_row("predictions", str(state.predictions), "degraded", str(state.degraded))
    serve.add_row("latency p50", f"{p50:.1f} ms", "p95", f"{p95:.1f} ms")
    serve.add_row("answering", state.serving, "feature freshness p50", f"{fresh:.1f} s")
    serve.add_row("stale answers re-asked", str(state.stale), "", "")
    return Group(
        Panel(flow, title="sources -> ingest -> features"),
        Panel(serve, title="serve (POST /v1/predict/batch)"),
        Panel(
            accuracy_table(state.rolling.rows()),
            title="rolling accuracy per version (the demo's labels vs the answers)",
        ),
        Panel(_drift_table(state, watcher), title="drift.events (the monitor)"),
        Panel(_models_table(state, watcher), title="models.events (registered, promoted)"),
        Panel("\n".join(state.events) or "-", title="what happened"),
    )


def _drift_table(state: DemoState, watcher: TopicWatcher) -> Table | str:
    events = [e for e in watcher.drift if e.produced_at.timestamp() >= state.demo_wall][-4:]
    if not events:
        return "none yet"
    table = Table("at", "on", "drift", "test", "change point", box=None)
    table.columns[2].overflow = table.columns[3].overflow = "ellipsis"
    for e in events:
        table.add_row(
            f"{state.at(e.produced_at):.0f}s",
            f"v{e.version}",
            f"{e.kind}: {e.feature}",
            f"{e.statistic} {e.value:.3g} > {e.threshold:.3g}",
            f"{state.at(e.change_point):.1f}s" if e.change_point else "-",
        )
    return table


def _models_table(state: DemoState, watcher: TopicWatcher) -> Table | str:
    if not watcher.models:
        return "none yet"
    table = Table("at", "version", "event", "holdout auc", "reason", box=None)
    table.columns[4].overflow = "ellipsis"
    table.columns[4].no_wrap = True
    for m in watcher.models[-4:]:
        auc = m.metrics.get("auc")
        alias = f" ({m.alias})" if m.alias else ""
        table.add_row(
            f"{state.at(m.produced_at):.0f}s",
            f"v{m.version}",
            f"{m.kind}{alias}",
            f"{auc:.3f}" if auc is not None else "-",
            m.reason,
        )
    return table


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.most_common(3)) or "0"

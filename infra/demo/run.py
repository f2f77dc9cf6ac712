"""The demo's run: the entities, the traffic, the topics and the view, tick by tick."""

from __future__ import annotations

import random
import time
from collections import deque

import httpx
from rich.console import Console
from rich.live import Live

from infra.demo.feed import Pending, predict_tick, send_tick
from infra.demo.population import Population, synthetic_sources
from infra.demo.seeding import seed_history
from infra.demo.state import DemoState
from infra.demo.summary import print_summary
from infra.demo.timeline import (
    DRIFT_AFTER_LABELS,
    OUTAGE_AT,
    OUTAGE_FOR,
    drift_due,
    loop_closed_now,
)
from infra.demo.topics import TopicWatcher, note_new_events
from infra.demo.view import render
from libs.common.definitions import load_definitions
from libs.common.settings import Settings

TICK_S = 0.5


def run_demo(
    settings: Settings,
    console: Console,
    *,
    duration_s: float,
    rate: float,
    drift_after: int = DRIFT_AFTER_LABELS,
) -> None:
    """Run the demo against the stack `settings` point at; see the package docstring.

    Args:
        settings: where the stack is.
        console: where the live view and the summary go.
        duration_s: stop after this many seconds; 0 stops once the loop has closed.
        rate: reports (and so labels) per second per source.
        drift_after: champion answers judged before the drift is injected.
    """
    from services.retrain.settings import RetrainSettings

    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    boot = RetrainSettings()
    sources, labeller, truth_sources = synthetic_sources(definitions, model, boot.bootstrap_seed)
    run = f"{int(time.time()) & 0xFFFFFF:06x}"  # fresh entity ids on every run
    population = Population(
        max(10, round(rate * boot.bootstrap_step_s)),
        boot.bootstrap_steps,
        boot.bootstrap_step_s,
        f"demo{run}",
        random.Random(int(time.time())),
    )
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    state = DemoState(console)
    watcher = TopicWatcher(settings)
    watcher.start()
    pending: deque[Pending] = deque()
    refit_labels = model.drift.refit_labels
    label_rate = population.size / boot.bootstrap_step_s
    console.print(
        f"[bold]signalops demo[/] model {model.name!r}, {population.size} entities per source, "
        f"a report every ~{boot.bootstrap_step_s:.0f}s each ({label_rate:.0f} labels/s)\n"
        f"  seeding: {population.size * (boot.bootstrap_steps - 1) // 2:,} back-dated reports, "
        "then the live clock starts\n"
        f"  {OUTAGE_AT:.0f}-{OUTAGE_AT + OUTAGE_FOR:.0f}s  source outage\n"
        f"  ~{OUTAGE_FOR + drift_after / label_rate:.0f}s  concept drift, after {drift_after:,} "
        "labels judged the champion\n"
        f"  then     the monitor's drift event, a new version; a refit after {refit_labels:,} "
        "labels since the change\n"
        "  end      "
        + ("once the new version has been judged" if duration_s <= 0 else f"at {duration_s:.0f}s")
        + " (Ctrl-C stops sooner)",
        highlight=False,
    )
    seen_events: set[str] = set()
    seen_models: set[str] = set()
    with (
        httpx.Client(timeout=30.0) as http,
        Live(console=console, refresh_per_second=4, vertical_overflow="ellipsis") as live,
    ):

        def show() -> None:
            live.update(render(state, watcher))

        try:
            views = [(v.name, v.version) for v in definitions.views_of_model(model)]
            seed_history(http, settings, model, views, population, sources, labeller, state, show)
            state.live_wall = time.time()
            population.resume(state.live_wall)
            state.phase = "live"
            state.note("live: reports, bad records, late events and duplicates on")
            while duration_s <= 0 or time.time() - state.demo_wall < duration_s:
                tick = time.monotonic()
                elapsed = state.elapsed()
                if state.drift_at is None and drift_due(state, drift_after, elapsed):
                    for s in truth_sources:
                        s.drifted = not s.drifted
                    state.drift_at = elapsed
                    state.note("concept drift injected: the labelling function flipped")
                send_tick(http, ingest, population, sources, labeller, state, pending, elapsed)
                predict_tick(http, serve, ingest, model.name, state, pending)
                note_new_events(state, watcher, seen_events, seen_models)
                show()
                if duration_s <= 0 and loop_closed_now(state, watcher, refit_labels):
                    state.note("the loop closed: drift found, retrained, promoted, serving")
                    show()
                    break
                time.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))
        except KeyboardInterrupt:
            state.note("stopped by Ctrl-C")
            show()
        finally:
            watcher.stop()
    print_summary(console, state, watcher)

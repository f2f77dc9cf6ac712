"""`signalops demo`: synthetic sources through the whole loop, drift-driven, shown live.

Nobody asks for a retrain: the demo injects a concept drift and the platform finds it
(the drift monitor), retrains on what came after it and promotes the new version.

Timeline (the live clock starts once the seeded history has reached the features):
- seeding: every entity gets a back-dated history of reports, so the mix of entity
  ages (and of window features such as counts over an hour) is the one the bootstrap
  model was trained on; without it the window features drift, rightly, on their own;
- all along: each entity reports every `bootstrap_step_s` (30 s) for
  `bootstrap_steps` (100) reports, then a new entity replaces it; bad records, late
  events and duplicates ride along. Each report is scored through serve's batch
  endpoint about 1.5 s later, and the answer's label (the synthetic truth's Bayes
  decision for the state the report shows) is posted naming the prediction:
  about `--rate` labels per second (20 by default);
- at 30-45 s: the sources' outage (nothing is sent);
- the drift: once `--drift-after` labels (1,000) have judged the champion (about
  65 s at 20 labels/s), the labelling function flips; the features do not change;
- then the monitor raises a performance drift after `drift.post_change_labels`
  labels since the change, the trainer trains on them and promotes; after
  `drift.refit_labels` it refits once more (signalops.yaml);
- the end: with `--duration 0`, once the newest drift event has a registered
  version and the version serving has been judged 200 times (about 3-5 minutes in
  all); Ctrl-C stops sooner. A summary of timings and accuracies is printed.

The truth before the drift is the one the champion learnt: the bootstrap's (seed
`bootstrap_seed`); a champion left by an earlier demo run on the same data directory
learnt the flipped truth, so the demo starts from whichever truth the champion
agrees with and flips it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import ModelDefinition, load_definitions
from libs.common.schemas import DriftDetected, ModelChanged
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticConfig, SyntheticRecord, SyntheticSource

OUTAGE_AT, OUTAGE_FOR = 30.0, 15.0  # live clock
TICK_S = 0.5
PREDICT_AFTER_S = 1.5  # a report is scored this long after it was sent
ROLLING = 200  # labels per version in the rolling accuracy
DRIFT_AFTER_LABELS = 1000  # champion answers judged before the drift is injected
SEED_CHUNK = 1000


# pure parts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Judged:
    """One answer and its label, as the demo saw them."""

    at: float  # live clock, when the label was posted
    version: str
    variant: str  # champion, challenger or fallback
    correct: bool


@dataclass(frozen=True)
class VersionAccuracy:
    version: str
    variant: str
    labels: int
    accuracy: float  # over the newest `size` labels
    first_at: float
    last_at: float


class RollingAccuracy:
    """Accuracy of each served version and variant over its newest `size` labels."""

    def __init__(self, size: int = ROLLING) -> None:
        self.size = size
        self._windows: dict[tuple[str, str], deque[bool]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._first: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}

    def add(self, j: Judged) -> None:
        key = (j.version, j.variant)
        self._windows.setdefault(key, deque(maxlen=self.size)).append(j.correct)
        self._counts[key] += 1
        self._first.setdefault(key, j.at)
        self._last[key] = j.at

    def rows(self) -> list[VersionAccuracy]:
        """One row per (version, variant), in the order they first answered."""
        return sorted(
            (
                VersionAccuracy(
                    v,
                    variant,
                    self._counts[(v, variant)],
                    sum(w) / len(w),
                    self._first[(v, variant)],
                    self._last[(v, variant)],
                )
                for (v, variant), w in self._windows.items()
            ),
            key=lambda r: (r.first_at, r.version, r.variant),
        )


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


@dataclass
class _Schedule:
    entity_id: str
    next_at: float
    reports: int = 0


@dataclass
class Due:
    reports: list[str] = field(default_factory=list)
    born: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


class Population:
    """Who reports when: `size` entities, each reporting about every `step_s` for `life`
    reports, then replaced by a new one (so the mix of ages stays the same).

    The intervals are those of the bootstrap history (`SyntheticSource.history`): the
    step plus the difference of two jitters uniform over half a step.
    """

    def __init__(
        self, size: int, life: int, step_s: float, prefix: str, rng: random.Random
    ) -> None:
        self.size, self.life, self.step_s, self.prefix = size, life, step_s, prefix
        self._rng = rng
        self._serial = 0
        self.schedules: list[_Schedule] = []

    def _new_id(self) -> str:
        self._serial += 1
        return f"{self.prefix}-{self._serial}"

    def _interval(self) -> float:
        half = self.step_s / 2
        return self.step_s + self._rng.uniform(0, half) - self._rng.uniform(0, half)

    def seed(self, now: float) -> list[tuple[float, str]]:
        """Create the entities with ages spread evenly over a life; returns their past
        reports, (time, entity id) in time order, all before `now`."""
        past: list[tuple[float, str]] = []
        for i in range(self.size):
            age = i * self.life // self.size
            s = _Schedule(self._new_id(), now, age)
            at = now - self._rng.uniform(1.0, self.step_s)
            for _ in range(age):
                past.append((at, s.entity_id))
                at -= self._interval()
            self.schedules.append(s)
        past.sort()
        return past

    def resume(self, now: float) -> None:
        """Spread the next reports over one step from `now` (the live start)."""
        for s in self.schedules:
            s.next_at = now + self._rng.uniform(0, self.step_s)

    def due(self, now: float) -> Due:
        """The entities whose report is due at `now`, advancing their schedules; an entity
        whose life is over retires after this report and a new one is born."""
        out = Due()
        for i, s in enumerate(self.schedules):
            if s.next_at > now:
                continue
            out.reports.append(s.entity_id)
            s.reports += 1
            s.next_at += self._interval()
            if s.reports >= self.life:
                out.retired.append(s.entity_id)
                born = _Schedule(self._new_id(), s.next_at)
                out.born.append(born.entity_id)
                self.schedules[i] = born
        return out


# the live demo ------------------------------------------------------------------------
@dataclass
class _Pending:
    entity_id: str
    label: float
    sent_wall: float
    tries: int = 0


class TopicWatcher(threading.Thread):
    """Re-reads drift.events and models.events every few seconds (small topics)."""

    def __init__(self, settings: Settings, every_s: float = 2.0) -> None:
        super().__init__(name="demo-topics", daemon=True)
        self._settings = settings
        self._every_s = every_s
        self._stop = threading.Event()
        self.drift: list[DriftDetected] = []
        self.models: list[ModelChanged] = []
        self.errors = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from infra.kafka_tools import read_values

        s = self._settings

        async def read() -> tuple[list[bytes], list[bytes]]:
            drift = await read_values(s.kafka_bootstrap, s.topics.drift)
            models = await read_values(s.kafka_bootstrap, s.topics.models)
            return drift, models

        while not self._stop.is_set():
            try:
                drift, models = asyncio.run(read())
                self.drift = _decode(DriftDetected.from_bytes, drift)
                self.models = _decode(ModelChanged.from_bytes, models)
            except Exception:  # the view keeps what it had; counted
                self.errors += 1
            self._stop.wait(self._every_s)


def _decode(parse: Callable[[bytes], Any], values: list[bytes]) -> list[Any]:
    out = []
    for v in values:
        try:
            out.append(parse(v))
        except ValueError:
            continue
    return out


class DemoState:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.phase = "starting"
        self.sent = Counter[str]()
        self.accepted = 0
        self.rejected = Counter[str]()
        self.outcomes = 0
        self.predictions = 0
        self.degraded = 0
        self.stale = 0
        self.latencies: deque[float] = deque(maxlen=500)
        self.freshness: deque[float] = deque(maxlen=200)
        self.errors = Counter[str]()
        self.events: deque[str] = deque(maxlen=6)
        self.rolling = RollingAccuracy()
        self.judged: list[Judged] = []
        self.demo_wall = time.time()  # when the demo started (events before are old)
        self.live_wall: float | None = None  # wall time of the live clock's zero
        self.drift_at: float | None = None
        self.flipped = False
        self.serving = "-"
        self.outage = False

    def elapsed(self) -> float:
        return 0.0 if self.live_wall is None else time.time() - self.live_wall

    def at(self, when: datetime) -> float:
        """A wall time on the live clock."""
        return when.timestamp() - (self.live_wall or time.time())

    def note(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        self.events.append(line)
        if not self.console.is_terminal:  # a log, not a screen: print as it happens
            self.console.print(line, highlight=False)

    def render(self, watcher: TopicWatcher) -> Group:
        elapsed = self.elapsed()
        outage = self.outage
        flow = Table.grid(padding=(0, 2))
        flow.add_row(
            "live clock",
            f"{elapsed:.0f}s ({self.phase})",
            "source",
            "[red]OUTAGE[/red]" if outage else "[green]sending[/green]",
        )
        flow.add_row(
            "signals sent",
            str(sum(self.sent.values())),
            "labelling",
            f"[yellow]drifted at {self.drift_at:.0f}s[/yellow]"
            if self.drift_at is not None
            else "as the champion learnt",
        )
        flow.add_row(
            "accepted",
            str(self.accepted),
            "rejected",
            ", ".join(f"{k}={v}" for k, v in self.rejected.most_common(4)) or "0",
        )
        flow.add_row(
            "late sent", str(self.sent["late"]), "duplicates sent", str(self.sent["duplicate"])
        )
        flow.add_row("labels posted", str(self.outcomes), "errors", _counts(self.errors))
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
        fresh = statistics.median(self.freshness) if self.freshness else float("nan")
        serve = Table.grid(padding=(0, 2))
        serve.add_row("predictions", str(self.predictions), "degraded", str(self.degraded))
        serve.add_row("latency p50", f"{p50:.1f} ms", "p95", f"{p95:.1f} ms")
        serve.add_row("answering", self.serving, "feature freshness p50", f"{fresh:.1f} s")
        serve.add_row("stale answers re-asked", str(self.stale), "", "")
        return Group(
            Panel(flow, title="sources -> ingest -> features"),
            Panel(serve, title="serve (POST /v1/predict/batch)"),
            Panel(
                accuracy_table(self.rolling.rows()),
                title="rolling accuracy per version (the demo's labels vs the answers)",
            ),
            Panel(self._drift_table(watcher), title="drift.events (the monitor)"),
            Panel(self._models_table(watcher), title="models.events (registered, promoted)"),
            Panel("\n".join(self.events) or "-", title="what happened"),
        )

    def _drift_table(self, watcher: TopicWatcher) -> Table | str:
        events = [e for e in watcher.drift if e.produced_at.timestamp() >= self.demo_wall][-4:]
        if not events:
            return "none yet"
        table = Table("at", "on", "drift", "test", "change point", box=None)
        table.columns[2].overflow = table.columns[3].overflow = "ellipsis"
        for e in events:
            table.add_row(
                f"{self.at(e.produced_at):.0f}s",
                f"v{e.version}",
                f"{e.kind}: {e.feature}",
                f"{e.statistic} {e.value:.3g} > {e.threshold:.3g}",
                f"{self.at(e.change_point):.1f}s" if e.change_point else "-",
            )
        return table

    def _models_table(self, watcher: TopicWatcher) -> Table | str:
        if not watcher.models:
            return "none yet"
        table = Table("at", "version", "event", "holdout auc", "reason", box=None)
        table.columns[4].overflow = "ellipsis"
        table.columns[4].no_wrap = True
        for m in watcher.models[-4:]:
            auc = m.metrics.get("auc")
            alias = f" ({m.alias})" if m.alias else ""
            table.add_row(
                f"{self.at(m.produced_at):.0f}s",
                f"v{m.version}",
                f"{m.kind}{alias}",
                f"{auc:.3f}" if auc is not None else "-",
                m.reason,
            )
        return table


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.most_common(3)) or "0"


def run_demo(
    settings: Settings,
    console: Console,
    *,
    duration_s: float,
    rate: float,
    drift_after: int = DRIFT_AFTER_LABELS,
) -> None:
    """Run the demo against the stack `settings` point at; see the module docstring.

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
    model_sources = list(dict.fromkeys(v.source for v in definitions.views_of_model(model)))
    config = SyntheticConfig(
        entities=0,
        bad_fraction=0.03,
        late_fraction=0.02,
        duplicate_fraction=0.02,
        outage_start_s=OUTAGE_AT,
        outage_duration_s=OUTAGE_FOR,
    )
    sources = []
    for j, src in enumerate(definitions.sources):
        # The model's sources use the bootstrap's seeds (seed + index among the model's
        # sources): the same truth the bootstrap model learnt.
        i = model_sources.index(src.name) if src.name in model_sources else 100 + j
        sources.append(
            SyntheticSource(src, dataclasses.replace(config, seed=boot.bootstrap_seed + i))
        )
    labeller = next(s for s in sources if s.source.name == model_sources[0])
    truth_sources = [s for s in sources if s.source.name in model_sources]
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
    pending: deque[_Pending] = deque()
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
            live.update(state.render(watcher))

        try:
            views = [(v.name, v.version) for v in definitions.views_of_model(model)]
            _seed(http, settings, model, views, population, sources, labeller, state, show)
            state.live_wall = time.time()
            population.resume(state.live_wall)
            state.phase = "live"
            state.note("live: reports, bad records, late events and duplicates on")
            while duration_s <= 0 or time.time() - state.demo_wall < duration_s:
                tick = time.monotonic()
                elapsed = state.elapsed()
                if state.drift_at is None and _drift_due(state, drift_after, elapsed):
                    for s in truth_sources:
                        s.drifted = not s.drifted
                    state.drift_at = elapsed
                    state.note("concept drift injected: the labelling function flipped")
                _send_tick(http, ingest, population, sources, labeller, state, pending, elapsed)
                _predict_tick(http, serve, ingest, model.name, state, pending)
                _watch(state, watcher, seen_events, seen_models)
                show()
                if duration_s <= 0 and _closed(state, watcher, refit_labels):
                    state.note("the loop closed: drift found, retrained, promoted, serving")
                    show()
                    break
                time.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))
        except KeyboardInterrupt:
            state.note("stopped by Ctrl-C")
            show()
        finally:
            watcher.stop()
    _print_summary(console, state, watcher)


def _drift_due(state: DemoState, drift_after: int, elapsed: float) -> bool:
    champion = sum(1 for j in state.judged if j.variant == "champion")
    return champion >= drift_after and elapsed >= OUTAGE_AT + OUTAGE_FOR + 5


def _closed(state: DemoState, watcher: TopicWatcher, refit_labels: int) -> bool:
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


def _seed(
    http: httpx.Client,
    settings: Settings,
    model: ModelDefinition,
    views: list[tuple[str, int]],
    population: Population,
    sources: list[SyntheticSource],
    labeller: SyntheticSource,
    state: DemoState,
    show: Callable[[], None],
) -> None:
    """Back-dated history for every entity, then wait until the features hold all of it;
    start from the truth the champion agrees with."""
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    started = time.monotonic()
    state.phase = "seeding"
    past = population.seed(time.time())
    for s in population.schedules:
        for src in sources:
            src.add_entity(s.entity_id)
    state.note(
        f"seeding {len(past) * len(sources):,} back-dated reports of {population.size} entities"
    )
    newest: dict[str, float] = {}
    for i in range(0, len(past), SEED_CHUNK):
        chunk = past[i : i + SEED_CHUNK]
        for src in sources:
            # Only the report itself: the extras (bad, late, duplicate) are the live part's.
            reports = [src.report(e, datetime.fromtimestamp(at, UTC))[0] for at, e in chunk]
            body = [r.payload for r in reports if isinstance(r.payload, dict)]
            _post_signals(http, ingest, body, state)
        newest.update({e: at for at, e in chunk})
        state.phase = f"seeding {min(i + SEED_CHUNK, len(past)):,}/{len(past):,}"
        show()
    # Wait on the online store itself, not on predictions: every answer is logged and
    # seen by the drift monitor, and answers from half-applied histories would look
    # like a feature drift (their hour counts are still low).
    deadline = time.monotonic() + 600
    share = 0.0
    while newest and time.monotonic() < deadline:
        share = asyncio.run(_applied_share(settings.redis_url, views, newest))
        state.phase = f"features applied for {share:.0%} of the entities"
        show()
        if share >= 0.99:
            break
        time.sleep(2.0)
    else:
        if newest:
            state.note(f"features caught up on {share:.0%} only in 600 s; going live anyway")
    state.note(f"seeded in {time.monotonic() - started:.0f}s")
    # One small batch to see which truth the champion learnt (50 logged answers).
    probe = list(newest)[-50:]
    answers = _predict(http, serve, model.name, probe, state) or []
    scored = [a for a in answers if a["model"]["variant"] != "fallback"]
    if scored:
        agree = sum(
            (a["score"] >= 0.5) == (labeller.decision(a["entity_id"]) == 1.0) for a in scored
        ) / len(scored)
        version = scored[0]["model"]["version"]
        if agree < 0.5:
            # The champion learnt the flipped truth (an earlier demo's retrain): start there.
            for src in sources:
                src.drifted = True
            state.flipped = True
        state.note(
            f"champion v{version} agrees with the "
            f"{'flipped' if state.flipped else 'bootstrap'} truth on {max(agree, 1 - agree):.0%}"
        )


async def _applied_share(
    redis_url: str, views: list[tuple[str, int]], newest: dict[str, float]
) -> float:
    """Share of entities whose every view holds their newest seeded report."""
    store = RedisFeatureStore(make_redis(redis_url))
    try:
        entities = list(newest)
        done = 0
        for i in range(0, len(entities), 1000):
            part = entities[i : i + 1000]
            for e, found in zip(part, await store.read_vectors(views, part), strict=True):
                as_of = [v.as_of for v in found.values()]
                done += len(as_of) == len(views) and min(as_of) >= newest[e] - 1e-3
        return done / len(entities)
    finally:
        await store.close()


def _current(answer: dict[str, Any], since_wall: float, now: float) -> bool:
    """True when the answer's features were written after `since_wall`."""
    freshness = answer.get("feature_freshness_s")
    return freshness is not None and now - freshness >= since_wall


def _post_signals(
    http: httpx.Client, ingest: str, body: list[dict[str, Any]], state: DemoState
) -> None:
    if not body:
        return
    try:
        resp = http.post(f"{ingest}/v1/signals", json=body)
        doc = resp.json()
    except (httpx.HTTPError, ValueError):
        state.errors["ingest"] += 1
        return
    state.accepted += len(doc.get("accepted", []))
    for rej in doc.get("rejected", []):
        state.rejected[rej["reason"]] += 1


def _send_tick(
    http: httpx.Client,
    ingest: str,
    population: Population,
    sources: list[SyntheticSource],
    labeller: SyntheticSource,
    state: DemoState,
    pending: deque[_Pending],
    elapsed: float,
) -> None:
    due = population.due(time.time())
    for entity in due.born:
        for src in sources:
            src.add_entity(entity)
    outage = sources[0].in_outage(elapsed)
    if outage != state.outage:
        state.outage = outage
        state.note("sources' outage begins (nothing sent)" if outage else "sources' outage ends")
    if not outage:
        now = datetime.now(UTC)
        sent_wall = time.time()
        for src in sources:
            records: list[SyntheticRecord] = []
            for entity in due.reports:
                records += src.report(entity, now)
            for r in records:
                state.sent[r.kind] += 1
            if src is labeller:
                pending.extend(_Pending(e, src.decision(e), sent_wall) for e in due.reports)
            # Malformed bodies go alone (they are not JSON); the rest as one batch.
            for raw in (r.payload for r in records if isinstance(r.payload, str)):
                _post_malformed(http, ingest, raw, state)
            _post_signals(
                http, ingest, [r.payload for r in records if isinstance(r.payload, dict)], state
            )
    for entity in due.retired:
        for src in sources:
            src.remove_entity(entity)


def _post_malformed(http: httpx.Client, ingest: str, raw: str, state: DemoState) -> None:
    try:
        resp = http.post(
            f"{ingest}/v1/signals", content=raw, headers={"content-type": "application/json"}
        )
        reason = (
            resp.json().get("rejected", [{}])[0].get("reason", "invalid_json")
            if resp.headers.get("content-type", "").startswith("application/json")
            else "invalid_json"
        )
    except (httpx.HTTPError, ValueError, IndexError):
        reason = "invalid_json"
    state.rejected[reason] += 1


def _predict(
    http: httpx.Client, serve: str, model: str, entities: list[str], state: DemoState
) -> list[dict[str, Any]] | None:
    body = {"requests": [{"entity_id": e, "model": model} for e in entities]}
    try:
        resp = http.post(f"{serve}/v1/predict/batch", json=body)
    except httpx.HTTPError:
        state.errors["serve"] += 1
        return None
    if resp.status_code != 200:
        state.errors[f"serve {resp.status_code}"] += 1
        return None
    answers: list[dict[str, Any]] = resp.json()["predictions"]
    return answers


def _predict_tick(
    http: httpx.Client,
    serve: str,
    ingest: str,
    model: str,
    state: DemoState,
    pending: deque[_Pending],
) -> None:
    """Score the reports sent at least PREDICT_AFTER_S ago; label each current answer."""
    cutoff = time.time() - PREDICT_AFTER_S
    batch: list[_Pending] = []
    while pending and pending[0].sent_wall <= cutoff and len(batch) < 500:
        batch.append(pending.popleft())
    if not batch:
        return
    answers = _predict(http, serve, model, [p.entity_id for p in batch], state)
    if answers is None:
        pending.extendleft(reversed(batch))  # tried again next tick
        return
    now_wall = time.time()
    outcomes: list[dict[str, Any]] = []
    judged: list[Judged] = []
    for p, a in zip(batch, answers, strict=True):
        state.predictions += 1
        if a["entity_id"] != p.entity_id:  # answers come in request order
            state.errors["serve order"] += 1
            continue
        # An answer from features older than the report would be judged by a label it
        # never saw: ask again (a few times) once the features have caught up.
        if not _current(a, p.sent_wall - 1.0, now_wall) and p.tries < 3:
            state.stale += 1
            pending.append(_Pending(p.entity_id, p.label, p.sent_wall, p.tries + 1))
            continue
        state.latencies.append(a["latency_ms"])
        state.degraded += bool(a["degraded"])
        if a.get("feature_freshness_s") is not None:
            state.freshness.append(a["feature_freshness_s"])
        m = a["model"]
        outcomes.append(
            {
                "model": model,
                "entity_id": p.entity_id,
                "event_time": datetime.now(UTC).isoformat(),
                "label": p.label,
                "prediction_id": a["prediction_id"],
            }
        )
        judged.append(
            Judged(
                state.elapsed(), m["version"], m["variant"], (a["score"] >= 0.5) == (p.label == 1.0)
            )
        )
    if not outcomes:
        return
    try:
        resp = http.post(f"{ingest}/v1/outcomes", json=outcomes)
        accepted = len(resp.json().get("accepted", []))
    except (httpx.HTTPError, ValueError):
        state.errors["outcomes"] += 1
        return
    state.outcomes += accepted
    for j in judged:
        if j.variant == "champion" and f"v{j.version}" != state.serving:
            if state.serving != "-":
                state.note(f"version {j.version} now answers as champion")
            state.serving = f"v{j.version}"
        state.rolling.add(j)
        state.judged.append(j)


def _watch(
    state: DemoState, watcher: TopicWatcher, seen_events: set[str], seen_models: set[str]
) -> None:
    """Notes for drift and model events published since the demo started."""
    for e in watcher.drift:
        if e.event_id in seen_events or e.produced_at.timestamp() < state.demo_wall:
            continue
        seen_events.add(e.event_id)
        cp = f", change point {state.at(e.change_point):.1f}s" if e.change_point else ""
        state.note(f"drift event: {e.kind} {e.feature} ({e.statistic}) on v{e.version}{cp}")
    for m in watcher.models:
        if m.event_id in seen_models or m.produced_at.timestamp() < state.demo_wall:
            continue
        seen_models.add(m.event_id)
        alias = f" as {m.alias}" if m.alias else ""
        state.note(f"model event: v{m.version} {m.kind}{alias}")


def _print_summary(console: Console, state: DemoState, watcher: TopicWatcher) -> None:
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

"""`signalops demo`: synthetic sources through the whole loop, shown live.

Timeline (seconds from start): bad records, late events and duplicates all along;
a source outage at 40-55; an abrupt concept drift at 70, followed by a retrain
request at 85 (the drift monitor will raise it on its own once it lands).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter, deque
from datetime import UTC, datetime

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from libs.common.definitions import load_definitions
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticConfig, SyntheticSource

OUTAGE_AT, OUTAGE_FOR, DRIFT_AT, RETRAIN_AT = 40.0, 15.0, 70.0, 85.0
TICK_S = 0.5


class DemoState:
    def __init__(self) -> None:
        self.sent = Counter[str]()
        self.accepted = 0
        self.rejected = Counter[str]()
        self.outcomes = 0
        self.predictions = 0
        self.degraded = 0
        self.latencies: deque[float] = deque(maxlen=500)
        self.versions = Counter[str]()
        self.last_model = "-"
        self.freshness: deque[float] = deque(maxlen=200)
        self.events: deque[str] = deque(maxlen=8)
        self.errors = 0

    def note(self, elapsed: float, text: str) -> None:
        self.events.append(f"[{elapsed:6.1f}s] {text}")

    def render(self, elapsed: float, outage: bool, drifted: bool) -> Group:
        flow = Table.grid(padding=(0, 2))
        flow.add_row(
            "elapsed",
            f"{elapsed:.0f}s",
            "source",
            "[red]OUTAGE[/red]" if outage else "[green]sending[/green]",
        )
        flow.add_row(
            "signals sent",
            str(sum(self.sent.values())),
            "concept",
            "[yellow]drifted[/yellow]" if drifted else "stable",
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
        flow.add_row("outcomes (labels)", str(self.outcomes), "", "")
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p95 = lat[int(0.95 * (len(lat) - 1))] if lat else float("nan")
        serve = Table.grid(padding=(0, 2))
        serve.add_row("predictions", str(self.predictions), "degraded", str(self.degraded))
        serve.add_row("latency p50", f"{p50:.1f} ms", "p95", f"{p95:.1f} ms")
        fresh = statistics.median(self.freshness) if self.freshness else float("nan")
        serve.add_row("model now", self.last_model, "feature freshness p50", f"{fresh:.1f} s")
        serve.add_row(
            "served by version",
            ", ".join(f"{k}: {v}" for k, v in sorted(self.versions.items())),
            "",
            "",
        )
        return Group(
            Panel(flow, title="ingest -> features"),
            Panel(serve, title="serve"),
            Panel("\n".join(self.events) or "-", title="what happened"),
        )


def run_demo(settings: Settings, console: Console, *, duration_s: float, rate: float) -> None:
    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    model_source = definitions.views_of_model(model)[0].source
    sources = [
        SyntheticSource(
            src,
            SyntheticConfig(
                entities=40,
                rate_per_s=rate,
                bad_fraction=0.03,
                late_fraction=0.02,
                duplicate_fraction=0.02,
                outage_start_s=OUTAGE_AT,
                outage_duration_s=OUTAGE_FOR,
                drift_at_s=DRIFT_AT,
                seed=i,
            ),
        )
        for i, src in enumerate(definitions.sources)
    ]
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    state = DemoState()
    rng = random.Random(7)
    start = time.monotonic()
    retrained = False
    with httpx.Client(timeout=10.0) as http, Live(console=console, refresh_per_second=4) as live:
        state.note(0, "demo started: bad records, late events and duplicates on")
        try:
            while duration_s <= 0 or time.monotonic() - start < duration_s:
                tick = time.monotonic()
                elapsed = tick - start
                for src in sources:
                    _send_tick(http, ingest, src, model.name, model_source, state, elapsed)
                _predict_tick(http, serve, rng, sources, state, elapsed)
                if not retrained and elapsed >= RETRAIN_AT:
                    retrained = True
                    _request_retrain(settings, model.name)
                    state.note(elapsed, f"retrain of {model.name!r} requested after the drift")
                live.update(
                    state.render(elapsed, sources[0].in_outage(elapsed), sources[0].drifted)
                )
                time.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))
        except KeyboardInterrupt:
            state.note(time.monotonic() - start, "stopped by Ctrl-C")
            live.update(state.render(time.monotonic() - start, False, sources[0].drifted))


def _send_tick(
    http: httpx.Client,
    ingest: str,
    src: SyntheticSource,
    model: str,
    model_source: str,
    state: DemoState,
    elapsed: float,
) -> None:
    if src.in_outage(elapsed):
        if not any("outage" in e for e in state.events):
            state.note(elapsed, f"source {src.source.name!r} outage begins (nothing sent)")
        return
    if src.drifted and not any("drift" in e for e in state.events):
        state.note(elapsed, "concept drift injected: ground truth flipped")
    now = datetime.now(UTC)
    records = [
        src.next_record(now, elapsed) for _ in range(max(1, int(src.config.rate_per_s * TICK_S)))
    ]
    for r in records:
        state.sent[r.kind] += 1
    # Malformed bodies go alone (they are not JSON); the rest as one batch.
    body = [r.payload for r in records if isinstance(r.payload, dict)]
    for raw in (r.payload for r in records if isinstance(r.payload, str)):
        resp = http.post(
            f"{ingest}/v1/signals", content=raw, headers={"content-type": "application/json"}
        )
        state.rejected[
            resp.json().get("rejected", [{}])[0].get("reason", "invalid_json")
            if resp.headers.get("content-type", "").startswith("application/json")
            else "invalid_json"
        ] += 1
    if body:
        resp = http.post(f"{ingest}/v1/signals", json=body)
        doc = resp.json()
        state.accepted += len(doc.get("accepted", []))
        for rej in doc.get("rejected", []):
            state.rejected[rej["reason"]] += 1
    if src.source.name == model_source:
        labels = [
            src.outcome(r.entity_id, now, model)
            for r in records
            if r.kind == "ok" and random.random() < 0.3
        ]
        if labels:
            resp = http.post(f"{ingest}/v1/outcomes", json=labels)
            state.outcomes += len(resp.json().get("accepted", []))


def _predict_tick(
    http: httpx.Client,
    serve: str,
    rng: random.Random,
    sources: list[SyntheticSource],
    state: DemoState,
    elapsed: float,
) -> None:
    for _ in range(5):
        entity = rng.choice(sources[0].entities).entity_id
        try:
            resp = http.post(
                f"{serve}/v1/predict",
                json={"entity_id": entity},
                headers={"X-Priority": rng.choice(["high", "normal", "low"])},
            )
        except httpx.HTTPError:
            state.errors += 1
            continue
        if resp.status_code != 200:
            state.errors += 1
            continue
        doc = resp.json()
        state.predictions += 1
        state.latencies.append(doc["latency_ms"])
        state.degraded += bool(doc["degraded"])
        m = doc["model"]
        label = f"{m['name']} v{m['version']} ({m['variant']})"
        if m["variant"] != "fallback":
            if state.last_model not in ("-", label):
                state.note(elapsed, f"now serving {label}")
            state.last_model = label
        state.versions[f"v{m['version']}"] += 1
        if doc.get("feature_freshness_s") is not None:
            state.freshness.append(doc["feature_freshness_s"])


def _request_retrain(settings: Settings, model: str) -> None:
    import asyncio

    from infra.kafka_tools import publish_one
    from libs.common.schemas import RetrainModel

    msg = RetrainModel(model=model, reason="demo: injected concept drift", requested_by="demo")
    asyncio.run(publish_one(settings.kafka_bootstrap, settings.topics.retrain, msg, key=model))

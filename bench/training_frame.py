"""Training frame and retraining speed: the window read with served features.

Builds a synthetic offline store as the services write it (`OfflineStore.append`, one
file per consumer batch): one entity per labelled row, two signals per entity before
its prediction, each prediction logged with the inputs serve computed from those
signals (the feature engine, as the features service does), and a label naming it two
seconds later. The labelling function flips at `since` (a concept drift), so the
window after it is what a retrain after a performance alarm trains on.

Then, in the same run:
  1. the frame build (`training_frame.build_training_frame` with `since`);
  2. `train_model` with a fresh MLflow registry, split into join / train / register.

The whole-store signal join it was once compared with is gone (issue 7); the
point-in-time join over signals has its own bench, bench/pit_join.py.

    .venv/bin/python bench/training_frame.py --window 5000 --history 5000
    .venv/bin/python bench/training_frame.py --window 100000 --history 0
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.definitions import Definitions, load_definitions
from libs.common.features.engine import EventColumns, States, apply, field_columns, vectors
from libs.common.features.plan import ViewPlan
from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore
from libs.common.schemas import ModelRef, Outcome, PredictionMade, Signal
from services.retrain.core.offline_rows import (
    batch_file_name,
    outcome_row,
    prediction_row,
    signal_row,
)

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # 2027-01-15: well after any real data
STEP_S = 0.5  # seconds between labelled rows


def _fields(rng: random.Random) -> dict[str, object]:
    fields: dict[str, object] = {
        "temperature": round(rng.gauss(20.0, 8.0), 3),
        "vibration": round(rng.uniform(0.0, 10.0), 3),
        "status": rng.choices(["ok", "warn", "error"], weights=[8, 1, 1])[0],
    }
    if rng.random() < 0.7:
        fields["pressure"] = round(rng.uniform(50.0, 300.0), 2)
    return fields


def write_store(
    root: Path,
    definitions: Definitions,
    model_name: str,
    *,
    rows: int,
    since_row: int,
    batch: int = 500,
    seed: int = 0,
) -> float:
    """Write `rows` labelled rows (plus their signals and logged answers) into `root`.

    Args:
        root: the offline store's folder.
        definitions: the definitions (the model's one source and view are used).
        model_name: the model the answers and labels belong to.
        rows: labelled rows; one entity each.
        since_row: the row where the concept drift happens (the window's start).
        batch: rows per Parquet file (one consumer batch).
        seed: random seed.

    Returns:
        The window's start, epoch seconds (the time of row `since_row`).
    """
    model = definitions.model(model_name)
    [view] = definitions.views_of_model(model)
    source = definitions.source(view.source)
    plan = ViewPlan.of(view, source)
    rng = random.Random(seed)
    store = OfflineStore(root)
    signals: list[dict[str, object]] = []
    predictions: list[dict[str, object]] = []
    outcomes: list[dict[str, object]] = []
    at = datetime.fromtimestamp

    def flush(final: bool = False) -> None:
        for kind, topic, buffer in (
            (SIGNALS, "signals.valid", signals),
            (PREDICTIONS, "predictions", predictions),
            (OUTCOMES, "outcomes", outcomes),
        ):
            size = 2 * batch if kind == SIGNALS else batch
            while len(buffer) >= size or (final and buffer):
                part, buffer[:] = buffer[:size], buffer[size:]
                offset = flush.offsets.get(kind, 0)  # type: ignore[attr-defined]
                store.append(kind, part, name=batch_file_name(topic, 0, offset))
                flush.offsets[kind] = offset + len(part)  # type: ignore[attr-defined]

    flush.offsets = {}  # type: ignore[attr-defined]
    for i in range(rows):
        ts = T0 + i * STEP_S
        entity = f"device-{i}"
        events: list[tuple[float, dict[str, Any]]] = []
        for lag in (50.0, 3.0):
            signal = Signal(
                source=source.name,
                entity_id=entity,
                event_time=at(ts - lag, UTC),
                fields=_fields(rng),
                schema_version=source.version,
            )
            signals.append(signal_row(signal))
            events.append((ts - lag, signal.fields))
        vector = _served(plan, events)
        features = {ref: vector.get(ref.partition(".")[2]) for ref in model.features}
        prediction = PredictionMade(
            entity_id=entity,
            event_time=at(ts, UTC),
            model=ModelRef(name=model.name, version="1", variant="champion"),
            score=0.5,
            features=features,
        )
        predictions.append(prediction_row(prediction))
        # The truth: temperature and vibration against their means; flips at `since_row`.
        x = (vector.get("temperature_last") or 20.0) - 20.0
        x += 2.0 * ((vector.get("vibration_last") or 5.0) - 5.0)
        sign = 1.0 if i < since_row else -1.0
        p = 1.0 / (1.0 + math.exp(-sign * 0.4 * x))
        outcomes.append(
            outcome_row(
                Outcome(
                    model=model.name,
                    entity_id=entity,
                    event_time=at(ts + 2.0, UTC),
                    label=float(rng.random() < p),
                    prediction_id=prediction.event_id,
                )
            )
        )
        flush()
    flush(final=True)
    return T0 + since_row * STEP_S


def _served(plan: ViewPlan, events: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The vector the features service holds for one entity after `events` (in order)."""
    numeric, text, _ = field_columns(plan.field_types, [f for _, f in events])
    n = len(events)
    states = States.empty(plan, 1)
    apply(
        plan,
        states,
        EventColumns(
            entity=np.zeros(n, dtype=np.int64),
            ts=np.array([t for t, _ in events]),
            seq=np.arange(n, dtype=np.float64),
            partition=np.full(n, -1, dtype=np.int64),
            offset=np.full(n, -1, dtype=np.int64),
            numeric=numeric,
            text=text,
        ),
    )
    return dict(vectors(plan, states)[0] or {})


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> None:
    """Parse the arguments and run the benchmark in a temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=5000, help="labelled rows after the change")
    parser.add_argument("--history", type=int, default=5000, help="labelled rows before it")
    parser.add_argument("--no-train", action="store_true", help="skip train_model")
    parser.add_argument("--repeat", type=int, default=3, help="new-path repetitions (best)")
    parser.add_argument("--definitions", default=str(REPO / "signalops.yaml"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-training-frame-"))
    try:
        run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    """Write the store under `work`, then time both paths and `train_model`."""
    import ray

    from services.retrain.adapters.training_frame import build_training_frame
    from services.retrain.core.dataset import JoinSpec
    from services.retrain.settings import RetrainSettings
    from services.retrain.train import train_model

    console = Console()
    definitions = load_definitions(args.definitions)
    model = definitions.models[0]
    spec = JoinSpec.of(definitions, model.name)
    offline = work / "data" / "offline"
    total = args.history + args.window
    (since, write_s) = _timed(
        write_store, offline, definitions, model.name, rows=total, since_row=args.history
    )
    store = OfflineStore(offline)
    console.print(
        f"store: {total:,} labelled rows ({args.history:,} before the change, "
        f"{args.window:,} after), {len(store.files(SIGNALS))} signal files, "
        f"written in {write_s:.1f} s"
    )
    window = since if args.history else None

    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    console.print(f"ray.init: {time.perf_counter() - started:.1f} s")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False

    table = Table(title=f"training frame, {args.window:,} rows in the window")
    for column in ("path", "seconds", "rows"):
        table.add_column(column, justify="right" if column != "path" else "left")
    new_s = math.inf
    frame = pd.DataFrame()
    for _ in range(max(1, args.repeat)):
        frame, seconds = _timed(build_training_frame, store, spec, since=window)
        new_s = min(new_s, seconds)
    table.add_row("new: served features, window read", f"{new_s:.2f}", f"{len(frame):,}")
    console.print(table)

    if not args.no_train:
        settings = RetrainSettings(
            data_dir=work / "data",
            definitions=Path(args.definitions),
            mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
            train_with_bootstrap_history=False,
        )
        runs = Table(title="train_model (fresh MLflow registry)")
        for column in ("run", "join s", "train s", "register s", "total s", "rows", "promoted"):
            runs.add_column(column, justify="left" if column == "run" else "right")
        for run in ("first (empty registry)", "second (scores the champion)"):
            result = train_model(settings, definitions, model.name, "bench", since=window)
            t = result.timings
            runs.add_row(
                run,
                f"{t['join_s']:.2f}",
                f"{t['train_s']:.2f}",
                f"{t['register_s']:.2f}",
                f"{t['total_s']:.2f}",
                f"{int(result.metrics['rows']):,}",
                str(result.promoted),
            )
        console.print(runs)
    ray.shutdown()


if __name__ == "__main__":
    main()

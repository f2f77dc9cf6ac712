"""Point-in-time join speed (issue 7): `build_training_frame` over labels left to the signal join.

Builds a synthetic offline store in a temporary folder, in the layout the services
write (`{kind}/date=YYYY-MM-DD/*.parquet`, libs/common/offline.py SCHEMAS): for N
labels, N/10 entities of the demo's `sensors` source, each with about 10 signals
within two hours (arrival at ingest 0.05-2 s after the event, 5% of them 1-10 min
late; Kafka positions in arrival order over 4 partitions) and 10 labels at random
times around them. 80% of the labels name no prediction (joined as of label time
minus the horizon), 20% name a fallback answer logged without inputs (joined as of
the answer's time): every label goes to the engine replay, none is served from
logged inputs. Then it times `build_training_frame` (best of `--repeat`), in
process or on Ray Data as its size threshold decides (`--ray` forces Ray Data).

    .venv/bin/python bench/pit_join.py --labels 100000 1000000
    .venv/bin/python bench/pit_join.py --labels 100000 --ray
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.definitions import load_definitions
from libs.common.offline import OUTCOMES, PREDICTIONS, SCHEMAS, SIGNALS, OfflineStore, date_of

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # 2027-01-15: well after any real data
SPAN_S = 2 * 86400.0  # entities start anywhere in two days (two or three date folders)
ACTIVE_S = 7200.0  # an entity's signals fall within two hours
ROWS_PER_FILE = 200_000


def _write(store: OfflineStore, kind: str, columns: dict[str, Any]) -> None:
    """Write rows of `kind` under their event dates, `ROWS_PER_FILE` per file."""
    table = pa.table(columns, schema=SCHEMAS[kind])
    dates = np.array([date_of(t) for t in np.floor(columns["ts"] / 3600.0) * 3600.0])
    for date in np.unique(dates):
        part = table.filter(pa.array(dates == date))
        folder = Path(store.date_dir(kind, str(date)))
        folder.mkdir(parents=True, exist_ok=True)
        for n, start in enumerate(range(0, part.num_rows, ROWS_PER_FILE)):
            pq.write_table(part.slice(start, ROWS_PER_FILE), folder / f"{kind}-{n:04d}.parquet")


def write_store(root: Path, labels: int, model: str, source: str, seed: int = 0) -> dict[str, int]:
    """Write the synthetic store for `labels` labels (module docstring); returns sizes."""
    rng = np.random.default_rng(seed)
    store = OfflineStore(root)
    entities = max(1, labels // 10)
    names = np.array([f"device-{i}" for i in range(entities)], dtype=object)
    start = T0 + rng.uniform(0.0, SPAN_S, entities)

    # Signals: 8-12 per entity (10 on average).
    per = rng.integers(8, 13, entities)
    owner = np.repeat(np.arange(entities), per)
    n = len(owner)
    ts = start[owner] + rng.uniform(0.0, ACTIVE_S, n)
    late = rng.random(n) < 0.05
    arrival = ts + np.where(late, rng.uniform(60.0, 600.0, n), rng.uniform(0.05, 2.0, n))
    partition = owner % 4
    order = np.argsort(arrival, kind="stable")  # Kafka order is arrival order
    offset = np.empty(n, dtype=np.int64)
    for p in range(4):
        mine = order[partition[order] == p]
        offset[mine] = np.arange(len(mine))
    temperature = np.round(rng.normal(20.0, 8.0, n), 3)
    vibration = np.round(rng.uniform(0.0, 10.0, n), 3)
    pressure = np.round(rng.uniform(50.0, 300.0, n), 2)
    has_pressure = rng.random(n) < 0.7
    status = rng.choice(np.array(["ok", "warn", "error"]), n, p=[0.8, 0.1, 0.1])
    fields = [
        f'{{"pressure": {p}, "status": "{s}", "temperature": {t}, "vibration": {v}}}'
        if h
        else f'{{"status": "{s}", "temperature": {t}, "vibration": {v}}}'
        for p, h, s, t, v in zip(
            pressure.tolist(),
            has_pressure.tolist(),
            status.tolist(),
            temperature.tolist(),
            vibration.tolist(),
            strict=True,
        )
    ]
    _write(
        store,
        SIGNALS,
        {
            "event_id": [f"s{i}" for i in range(n)],
            "source": np.full(n, source, dtype=object),
            "schema_version": np.ones(n, dtype=np.int64),
            "entity_id": names[owner],
            "ts": ts,
            "fields_json": fields,
            "arrival_ts": arrival,
            "topic": np.full(n, "signals.valid", dtype=object),
            "partition": partition.astype(np.int64),
            "offset": offset,
        },
    )

    # Labels: 10 per entity, 20% naming a fallback answer logged without inputs.
    who = np.repeat(np.arange(entities), 10)[:labels]
    when = start[who] + rng.uniform(-600.0, ACTIVE_S + 1800.0, len(who))
    named = rng.random(len(who)) < 0.2
    pids = np.array([f"p{i}" if k else "" for i, k in enumerate(named.tolist())], dtype=object)
    answered = np.flatnonzero(named)
    _write(
        store,
        PREDICTIONS,
        {
            "event_id": pids[answered],
            "model": np.full(len(answered), model, dtype=object),
            "version": np.full(len(answered), "1", dtype=object),
            "variant": np.full(len(answered), "fallback", dtype=object),
            "entity_id": names[who[answered]],
            "ts": when[answered],
            "score": np.full(len(answered), 0.5),
            "features_json": np.full(len(answered), "{}", dtype=object),
        },
    )
    label_ts = np.where(named, when + 3600.0, when)  # a named answer's label comes later
    _write(
        store,
        OUTCOMES,
        {
            "event_id": [f"o{i}" for i in range(len(who))],
            "model": np.full(len(who), model, dtype=object),
            "entity_id": names[who],
            "ts": label_ts,
            "label": rng.integers(0, 2, len(who)).astype(np.float64),
            "prediction_id": [p or None for p in pids.tolist()],
        },
    )
    return {"entities": entities, "signals": n, "labels": len(who), "answers": len(answered)}


def main() -> None:
    """Parse the arguments and run the benchmark in a temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=2, help="builds per size (best)")
    parser.add_argument("--ray", action="store_true", help="force the Ray Data path")
    parser.add_argument("--definitions", default=str(REPO / "signalops.yaml"))
    args = parser.parse_args()
    from services.retrain.adapters import ray_data
    from services.retrain.adapters.training_frame import (
        IN_PROCESS_MAX_BYTES,
        build_training_frame,
    )
    from services.retrain.core.dataset import JoinSpec

    console = Console(width=120)
    definitions = load_definitions(args.definitions)
    model = definitions.models[0]
    spec = JoinSpec.of(definitions, model.name)
    if args.ray:
        import ray

        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
    limit = 0 if args.ray else IN_PROCESS_MAX_BYTES
    table = Table(title="point-in-time join: build_training_frame, every label replayed")
    for column in (
        "labels",
        "entities",
        "signals",
        "signal MB",
        "path",
        "write s",
        "build s",
        "rows",
    ):
        table.add_column(column, justify="right")
    results = []
    for labels in args.labels:
        work = Path(tempfile.mkdtemp(prefix="bench-pit-join-"))
        try:
            started = time.perf_counter()
            sizes = write_store(work, labels, model.name, spec.views[0].source)
            write_s = time.perf_counter() - started
            store = OfflineStore(work)
            signal_bytes = ray_data.stored_bytes(store, store.files(SIGNALS))
            path = "ray data" if signal_bytes > limit else "in process"
            best, rows = math.inf, 0
            for _ in range(max(1, args.repeat)):
                started = time.perf_counter()
                frame = build_training_frame(store, spec, in_process_max_bytes=limit)
                best = min(best, time.perf_counter() - started)
                rows = len(frame)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        table.add_row(
            f"{sizes['labels']:,}",
            f"{sizes['entities']:,}",
            f"{sizes['signals']:,}",
            f"{signal_bytes / 1e6:.1f}",
            path,
            f"{write_s:.1f}",
            f"{best:.2f}",
            f"{rows:,}",
        )
        results.append(
            {
                **sizes,
                "signal_mb": round(signal_bytes / 1e6, 1),
                "path": path,
                "build_s": round(best, 2),
                "rows": rows,
            }
        )
    console.print(table)
    print(json.dumps({"bench": "pit_join", "results": results}))


if __name__ == "__main__":
    main()

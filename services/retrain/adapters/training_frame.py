"""The training frame of a model: read what the window needs, join served features first.

1. Outcomes of the model in the window (pyarrow dataset, filters on `model` and
   `ts >= since`: a label comes after the answer it judges, so a window on answer
   times never needs older labels).
2. The logged answers those outcomes name (filters on `model`, `ts >= since` and the
   named ids; ids not found there are looked up before `since`, to know them as
   outside the window rather than unknown).
3. `core.served_rows.served_rows`: rows from the logged inputs (what serve saw).
4. The point-in-time join over signals only for the outcomes left (see
   `core.served_rows`): the engine replays the signals of their entities and the
   model's sources that had arrived by the latest query time (`core.dataset`),
   reading only the date folders up to it; no signal is read when none is left.

Small inputs are read and joined in this process (pyarrow and pandas, vectorised);
inputs whose Parquet files exceed `IN_PROCESS_MAX_BYTES` are read, and the signal
join run per entity-hash bucket, by Ray Data tasks (adapters/ray_data.py).
"""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Sequence
from functools import reduce

import pandas as pd
import pyarrow.dataset as ds

from libs.common.observability import get_logger
from libs.common.offline import OUTCOMES, PREDICTIONS, SCHEMAS, SIGNALS, OfflineStore
from services.retrain.adapters import ray_data
from services.retrain.adapters.ray_data import COMPARE, Predicate
from services.retrain.core.dataset import (
    ARRIVAL,
    AT,
    BY_EVENT_TIME,
    ENTITY,
    SIGNAL_COLUMNS,
    TS,
    JoinSpec,
    empty_rows,
    features_at,
    finish_frame,
    query_times,
    training_rows,
)
from services.retrain.core.served_rows import (
    EVENT_ID,
    FEATURES_JSON,
    OUTCOME_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTION_ID,
    served_rows,
)
from services.retrain.errors import NoTrainingData

log = get_logger(__name__)

# Parquet bytes of one kind (outcomes, predictions, signals) above which it is read,
# and the signal join run, by Ray Data instead of in this process. Below it a Ray
# Data job costs more in task round trips (about 1 s on 2 cores) than the work.
IN_PROCESS_MAX_BYTES = 256 * 1024 * 1024


def _expression(predicates: Sequence[Predicate]) -> ds.Expression | None:
    terms = [
        ds.field(c).isin(list(v)) if op == "in" else COMPARE[op](ds.field(c), v)
        for c, op, v in predicates
    ]
    return reduce(operator.and_, terms) if terms else None


def _read(
    store: OfflineStore,
    kind: str,
    columns: Sequence[str],
    predicates: Sequence[Predicate],
    *,
    max_bytes: int,
    files: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows of `kind` matching `predicates`, in the store's file and row order.

    Row order carries the produced order (files sort by topic, partition and offset);
    pyarrow's `to_table` and Ray Data's `to_pandas` both keep it. `files`: the files to
    read (default: all of `kind`).
    """
    files = store.files(kind) if files is None else files
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    if ray_data.stored_bytes(store, files) > max_bytes:
        return ray_data.read_rows(store, files, columns, predicates)
    dataset = ds.dataset(files, schema=SCHEMAS[kind], format="parquet", filesystem=store.filesystem)
    return dataset.to_table(columns=list(columns), filter=_expression(predicates)).to_pandas()


def _window(since: float | None) -> list[Predicate]:
    return [] if since is None else [(TS, ">=", since)]


def _logged_predictions(
    store: OfflineStore,
    spec: JoinSpec,
    outcomes: pd.DataFrame,
    since: float | None,
    max_bytes: int,
) -> pd.DataFrame:
    """The logged answers `outcomes` name, in the window and (ids only) before it."""
    ids = outcomes[PREDICTION_ID].dropna().to_numpy(dtype=object)  # Arrow strings iterate slowly
    named = sorted({p for p in ids if p})
    if not named:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PREDICTION_COLUMNS})
    model = [("model", "==", spec.model.name)]
    found = _read(
        store,
        PREDICTIONS,
        PREDICTION_COLUMNS,
        [*model, *_window(since), (EVENT_ID, "in", named)],
        max_bytes=max_bytes,
    )
    if since is None:
        return found
    missing = sorted(set(named) - set(found[EVENT_ID].to_numpy(dtype=object)))
    if not missing:
        return found
    columns = [c for c in PREDICTION_COLUMNS if c != FEATURES_JSON]
    older = _read(
        store,
        PREDICTIONS,
        columns,
        [*model, (TS, "<", since), (EVENT_ID, "in", missing)],
        max_bytes=max_bytes,
    ).assign(**{FEATURES_JSON: ""})
    return pd.concat([found, older], ignore_index=True) if len(older) else found


def _signal_join(
    store: OfflineStore,
    spec: JoinSpec,
    pending: pd.DataFrame,
    anchors: pd.DataFrame,
    *,
    partitions: int | None,
    max_bytes: int,
) -> tuple[pd.DataFrame, int]:
    """The point-in-time join over signals for `pending` only (`core.dataset`).

    Reads the signals of their entities and the model's sources with event and
    arrival times up to the latest query time (any arrival when a label names no
    prediction: those join by event time), from the date folders up to it.

    Returns:
        (training rows, cold starts dropped).
    """
    queries = query_times(pending, anchors, spec.model.label_horizon_s)
    if queries.empty:
        return empty_rows(spec), 0
    latest = float(queries[AT].max())
    files = store.files(SIGNALS, until=latest)
    if not files:
        return empty_rows(spec), len(queries)
    entities = queries[ENTITY].to_numpy(dtype=object)  # Arrow strings iterate slowly
    predicates: list[Predicate] = [
        (ENTITY, "in", sorted(set(entities))),
        ("source", "in", sorted(spec.source_versions)),
        (TS, "<=", latest),
    ]
    if not queries[BY_EVENT_TIME].any():
        # Rows written before lineage have no arrival time: they arrived at `ts`.
        predicates.append((ARRIVAL, "<=|null", latest))
    if ray_data.stored_bytes(store, files) > max_bytes:
        features = ray_data.signal_join_on_ray(
            store,
            spec,
            signal_files=files,
            signal_predicates=predicates,
            queries=queries,
            buckets=partitions,
        )
    else:
        signals = _read(
            store, SIGNALS, SIGNAL_COLUMNS, predicates, max_bytes=max_bytes, files=files
        )
        features = features_at(spec, signals, queries)
    return training_rows(spec, queries, features)


def build_training_frame(
    store: OfflineStore,
    spec: JoinSpec,
    *,
    partitions: int | None = None,
    since: float | None = None,
    in_process_max_bytes: int = IN_PROCESS_MAX_BYTES,
) -> pd.DataFrame:
    """Labelled rows of one model: what serve saw for each label (module docstring).

    Args:
        store: the offline store to read.
        spec: the model's join spec.
        partitions: entity buckets of a signal join on Ray Data; None: one per
            64 MiB of signal files.
        since: only rows as of this time (epoch seconds) or later: the data window.
        in_process_max_bytes: Parquet bytes per kind above which Ray Data reads it.

    Returns:
        `spec.columns` (float64 inputs, categorical inputs as str, label and ts; string
        entity and outcome ids), ordered by ts then outcome id; `ts` is the as-of
        time (the answer's time for a label naming a logged answer).

    Raises:
        NoTrainingData: the store holds no outcomes (or nothing at all) yet.
    """
    started = time.perf_counter()
    if not store.files(OUTCOMES):
        missing = "signals" if not store.files(SIGNALS) else "outcomes"
        raise NoTrainingData(f"the offline store {store.root!r} holds no {missing} yet")
    outcomes = _read(
        store,
        OUTCOMES,
        OUTCOME_COLUMNS,
        [("model", "==", spec.model.name), *_window(since)],
        max_bytes=in_process_max_bytes,
    )
    predictions = _logged_predictions(store, spec, outcomes, since, in_process_max_bytes)
    read_s = time.perf_counter() - started

    join = served_rows(spec, outcomes, predictions, since=since)
    if len(join.unknown):
        # Never joined at label time: what serve saw for them is unknown (served_rows).
        log.warning(
            "unknown_prediction_dropped",
            model=spec.model.name,
            outcomes=len(join.unknown),
            examples=join.unknown[EVENT_ID].head(5).tolist(),
            prediction_ids=join.unknown[PREDICTION_ID].head(5).tolist(),
        )
    signal_rows, cold_start = _signal_join(
        store,
        spec,
        join.pending,
        join.anchors,
        partitions=partitions,
        max_bytes=in_process_max_bytes,
    )
    parts = [p for p in (join.rows, signal_rows) if not p.empty]
    frame = finish_frame(pd.concat(parts, ignore_index=True) if parts else empty_rows(spec), spec)
    if since is not None:
        frame = frame[frame[TS] >= since].reset_index(drop=True)
    log.info(
        "training_frame",
        model=spec.model.name,
        since=since,
        rows=len(frame),
        signal_rows=len(signal_rows),
        read_s=round(read_s, 3),
        total_s=round(time.perf_counter() - started, 3),
        **dataclasses.replace(join.counts, cold_start=cold_start).as_dict(),
    )
    return frame

"""Ray Data plumbing of the label join: filtered reads and the point-in-time join by entity.

All Ray Data calls of the service live here; the per-entity join itself is the pure
`core.dataset.rows_for_entity`. What to read and which join answers which outcome is
decided in `adapters/training_frame.py`; this module runs the parts too large for
one process.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial, reduce
from typing import Any

import pandas as pd
import pyarrow as pa
import ray
from pyarrow import fs
from ray.data import DataContext, Dataset
from ray.data.expressions import Expr, col, lit

from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore
from services.retrain.core.dataset import (
    COMBINED_DTYPES,
    ENTITY,
    LABEL,
    JoinSpec,
    combined_outcomes,
    combined_predictions,
    combined_signals,
    finish_frame,
    rows_for_entity,
)
from services.retrain.errors import NoTrainingData

Transform = Callable[[pd.DataFrame, JoinSpec], pd.DataFrame]

Predicate = tuple[str, str, Any]
"""(column, operator, value): one conjunct of a row filter; operator one of
'==', '>=', '<', '<=' and 'in' (value a sequence). Built once, run by pyarrow or Ray."""

COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

_ARROW = {"object": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
COMBINED_SCHEMA = pa.schema([(c, _ARROW[t]) for c, t in COMBINED_DTYPES.items()])

# One read task and one shuffle partition per this many bytes of Parquet: small stores
# run as one task instead of Ray Data's default 200-way split (each task costs a worker
# round trip, which dominates on small data).
BYTES_PER_READ_TASK = 64 * 1024 * 1024


@contextmanager
def _join_context() -> Iterator[None]:
    """Ray Data settings for the join, restored afterwards (DataContext is process-wide).

    - `enable_arrow_backed_pandas_conversion = False`: since Ray 2.56 `to_pandas()`
      gives Arrow-backed columns, which LightGBM rejects (RAY_NOTES.md).
    - `use_datasource_v2 = False`: the V2 Parquet reader adds a ListFiles task per read;
      on the 2-core machines it made the same join 3-5x slower (7-17 s vs 44 s for
      2,400 labels), with no gain for files we already list ourselves.
    """
    ctx = DataContext.get_current()
    saved = (ctx.enable_arrow_backed_pandas_conversion, ctx.use_datasource_v2)
    ctx.enable_arrow_backed_pandas_conversion = False
    ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        ctx.enable_arrow_backed_pandas_conversion, ctx.use_datasource_v2 = saved


def _rows_schema(spec: JoinSpec) -> pa.Schema:
    """Arrow types of `spec.columns` (training rows)."""
    numeric = {*spec.feature_columns, LABEL, "ts"}
    return pa.schema([(c, pa.float64() if c in numeric else pa.string()) for c in spec.columns])


def _as_arrow(
    batch: pd.DataFrame, *, transform: Transform, spec: JoinSpec, schema: pa.Schema
) -> pa.Table:
    """Run a pure pandas transform and fix its Arrow types.

    Arrow infers `null` for a column that is all NaN/None in one batch (e.g. `label`
    of signal rows), and blocks with different types cannot be concatenated in the
    shuffle; an explicit schema keeps every block alike.
    """
    return pa.Table.from_pandas(transform(batch, spec), schema=schema, preserve_index=False)


def stored_bytes(store: OfflineStore, files: Sequence[str]) -> int:
    """Bytes of the given files of `store`."""
    infos = store.filesystem.get_file_info(list(files))
    return sum(i.size or 0 for i in infos if i.type == fs.FileType.File)


def _blocks(store: OfflineStore, files: Sequence[str]) -> int:
    return max(1, min(len(files), math.ceil(stored_bytes(store, files) / BYTES_PER_READ_TASK)))


def _ray_filter(predicates: Sequence[Predicate]) -> Expr | None:
    terms = [
        col(c).is_in(list(v)) if op == "in" else COMPARE[op](col(c), lit(v))
        for c, op, v in predicates
    ]
    return reduce(operator.and_, terms) if terms else None


def _read_filtered(
    store: OfflineStore,
    files: Sequence[str],
    columns: Sequence[str],
    predicates: Sequence[Predicate],
) -> Dataset:
    ds = ray.data.read_parquet(
        list(files), filesystem=store.filesystem, override_num_blocks=_blocks(store, files)
    )
    expr = _ray_filter(predicates)
    if expr is not None:
        ds = ds.filter(expr=expr)
    return ds.select_columns(list(columns))


def read_rows(
    store: OfflineStore,
    files: Sequence[str],
    columns: Sequence[str],
    predicates: Sequence[Predicate] = (),
) -> pd.DataFrame:
    """The rows of `files` matching all `predicates`, read by Ray Data tasks.

    Row order is the files' order: it carries the produced order the label rules use.
    """
    with _join_context():
        frame = _read_filtered(store, files, columns, predicates).to_pandas()
    return frame.reindex(columns=list(columns))


def _join(datasets: list[Dataset], spec: JoinSpec, partitions: int) -> pd.DataFrame:
    """Union combined datasets, group by entity and run `rows_for_entity` per group."""
    frame = (
        datasets[0]
        .union(*datasets[1:])
        .groupby(ENTITY, num_partitions=partitions)
        .map_groups(
            partial(_as_arrow, transform=rows_for_entity, spec=spec, schema=_rows_schema(spec)),
            batch_format="pandas",
        )
        .to_pandas()
    )
    return finish_frame(frame, spec)


def _combined(frame: pd.DataFrame, transform: Transform, spec: JoinSpec) -> Dataset:
    return ray.data.from_arrow(
        _as_arrow(frame, transform=transform, spec=spec, schema=COMBINED_SCHEMA)
    )


def signal_join_on_ray(
    store: OfflineStore,
    spec: JoinSpec,
    *,
    signal_files: Sequence[str],
    signal_predicates: Sequence[Predicate],
    outcomes: pd.DataFrame,
    anchors: pd.DataFrame,
    partitions: int | None = None,
) -> pd.DataFrame:
    """The point-in-time join over signals, on Ray Data, for the given outcomes only.

    Args:
        store: the offline store.
        spec: the model's join spec.
        signal_files: the signal files to read.
        signal_predicates: the row filter of signals (entities, sources, time).
        outcomes: outcome rows to answer (event_id, entity_id, ts, label, prediction_id).
        anchors: logged predictions they name (event_id, entity_id, ts).
        partitions: groupby partitions; None: one per 64 MiB of signals read.

    Returns:
        Training rows (`finish_frame`).
    """
    with _join_context():
        signals = _read_filtered(
            store,
            signal_files,
            ["event_id", "source", "schema_version", ENTITY, "ts", "fields_json"],
            signal_predicates,
        ).map_batches(
            partial(_as_arrow, transform=combined_signals, spec=spec, schema=COMBINED_SCHEMA),
            batch_format="pandas",
        )
        outcomes = outcomes.assign(model=spec.model.name)
        parts = [signals, _combined(outcomes, combined_outcomes, spec)]
        if not anchors.empty:
            parts.append(
                _combined(anchors.assign(model=spec.model.name), combined_predictions, spec)
            )
        if partitions is None:
            partitions = _blocks(store, signal_files)
        return _join(parts, spec, partitions)


def _read(store: OfflineStore, kind: str, transform: Transform, spec: JoinSpec) -> Dataset | None:
    files = store.files(kind)
    if not files:
        return None
    return ray.data.read_parquet(
        files, filesystem=store.filesystem, override_num_blocks=_blocks(store, files)
    ).map_batches(
        partial(_as_arrow, transform=transform, spec=spec, schema=COMBINED_SCHEMA),
        batch_format="pandas",
    )


def whole_store_frame(
    store: OfflineStore, spec: JoinSpec, *, partitions: int | None = None
) -> pd.DataFrame:
    """The signal join over the whole offline store: every label recomputed from signals.

    Reads all signals, outcomes and predictions with `ray.data.read_parquet`, maps each
    to one combined schema, unions them, groups by entity and joins each entity with
    `rows_for_entity`. Duplicates are removed per entity: event ids derive from
    content that includes the entity, so per-entity dedup is global dedup. No label
    rules (corrections, invalid labels) apply here.

    This was the only path before the served-features join (`build_training_frame`);
    it stays as the reference the benchmark and the equivalence test compare with.

    Args:
        store: the offline store to read.
        spec: the model's join spec.
        partitions: hash partitions of the groupby shuffle; None sizes them by data,
            one per 64 MiB (measured on 2 cores with 2,400 labels: 1 partition joins in
            ~1.2 s, 4 partitions in ~8 s, all overhead).

    Returns:
        A pandas frame with `spec.columns`, ordered by as-of time then outcome id.

    Raises:
        NoTrainingData: the store holds no signals or no outcomes.
    """
    with _join_context():
        parts = {
            SIGNALS: _read(store, SIGNALS, combined_signals, spec),
            OUTCOMES: _read(store, OUTCOMES, combined_outcomes, spec),
            PREDICTIONS: _read(store, PREDICTIONS, combined_predictions, spec),
        }
        for kind in (SIGNALS, OUTCOMES):
            if parts[kind] is None:
                raise NoTrainingData(f"the offline store {store.root!r} holds no {kind} yet")
        datasets = [d for d in parts.values() if d is not None]
        if partitions is None:
            stored = [f for kind in parts for f in store.files(kind)]
            partitions = max(1, math.ceil(stored_bytes(store, stored) / BYTES_PER_READ_TASK))
        return _join(datasets, spec, partitions)


def build_training_frame(
    store: OfflineStore,
    spec: JoinSpec,
    *,
    partitions: int | None = None,
    since: float | None = None,
) -> pd.DataFrame:
    """`adapters.training_frame.build_training_frame`, under its former address."""
    # Imported here: training_frame imports this module for its Ray Data parts.
    from services.retrain.adapters.training_frame import build_training_frame as build

    return build(store, spec, partitions=partitions, since=since)

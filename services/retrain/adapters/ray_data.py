"""Ray Data plumbing of the label join: filtered reads and the signal join by entity bucket.

All Ray Data calls of the service live here; the join itself is the pure
`core.dataset.features_at` (the engine replay). What to read and which join answers
which outcome is decided in `adapters/training_frame.py`; this module runs the parts
too large for one process.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial, reduce
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from pyarrow import fs
from ray.data import DataContext, Dataset
from ray.data.expressions import Expr, col, lit

from libs.common.offline import SCHEMAS, SIGNALS, OfflineStore
from services.retrain.core.dataset import (
    AT,
    BY_EVENT_TIME,
    ENTITY,
    SEEN,
    SIGNAL_COLUMNS,
    JoinSpec,
    as_categories,
    features_at,
)

Predicate = tuple[str, str, Any]
"""(column, operator, value): one conjunct of a row filter; operator one of
'==', '>=', '<', '<=', '<=|null' (at most the value, or null) and 'in' (value a
sequence). Built once, run by pyarrow or Ray."""

COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "<=|null": lambda field, value: (field <= value) | field.is_null(),
}

# One read task and one join bucket per this many bytes of Parquet: small stores run
# as one task instead of Ray Data's default 200-way split (each task costs a worker
# round trip, which dominates on small data).
BYTES_PER_READ_TASK = 64 * 1024 * 1024

QUERY = "query"
"""Position of a query in the frame given to `signal_join_on_ray`."""
_BUCKET = "_bucket"


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
    schema: pa.Schema | None = None,
) -> Dataset:
    ds = ray.data.read_parquet(
        list(files),
        filesystem=store.filesystem,
        override_num_blocks=_blocks(store, files),
        schema=schema,
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


def entity_bucket(entities: pd.Series, buckets: int) -> np.ndarray:
    """Bucket of each entity id: a stable hash (the same in every process) mod `buckets`."""
    hashed = pd.util.hash_array(entities.astype(str).to_numpy(dtype=object))
    return (hashed % np.uint64(buckets)).astype(np.int64)


def _features_schema(spec: JoinSpec) -> pa.Schema:
    """Arrow types of a bucket's answer: query position, model inputs, `seen`."""
    inputs = [
        (c, pa.string() if c in spec.categories else pa.float64()) for c in spec.feature_columns
    ]
    return pa.schema([(QUERY, pa.int64()), *inputs, (SEEN, pa.bool_())])


def _bucket_features(
    signals: pd.DataFrame,
    *,
    spec: JoinSpec,
    queries: Sequence[ray.ObjectRef],
    schema: pa.Schema,
) -> pa.Table:
    """`features_at` for one bucket: its signals (this group) and its queries."""
    asked = ray.get(queries[int(signals[_BUCKET].iloc[0])])
    features = features_at(spec, signals, asked).assign(**{QUERY: asked[QUERY].to_numpy()})
    return pa.Table.from_pandas(features[schema.names], schema=schema, preserve_index=False)


def _with_bucket(batch: pd.DataFrame, *, buckets: int) -> pd.DataFrame:
    return batch.assign(**{_BUCKET: entity_bucket(batch[ENTITY], buckets)})


def signal_join_on_ray(
    store: OfflineStore,
    spec: JoinSpec,
    *,
    signal_files: Sequence[str],
    signal_predicates: Sequence[Predicate],
    queries: pd.DataFrame,
    buckets: int | None = None,
) -> pd.DataFrame:
    """`core.dataset.features_at` on Ray Data, one task per entity-hash bucket.

    Signals and queries are split into buckets by a hash of the entity id; each
    bucket's signals are grouped by a shuffle and replayed against that bucket's
    queries (put once in the object store) by the same pure function the in-process
    path calls, so both paths give the same rows.

    Args:
        store: the offline store.
        spec: the model's join spec.
        signal_files: the signal files to read.
        signal_predicates: the row filter of signals (entities, sources, time).
        queries: (entity_id, at) rows (`core.dataset.query_times`).
        buckets: entity buckets; None: one per 64 MiB of signal files.

    Returns:
        `features_at` of `queries`, same index; queries of a bucket without signals
        are not seen (cold starts).
    """
    if buckets is None:
        buckets = _blocks(store, signal_files)
    if BY_EVENT_TIME not in queries:
        queries = queries.assign(**{BY_EVENT_TIME: False})
    asked = queries[[ENTITY, AT, BY_EVENT_TIME]].assign(**{QUERY: np.arange(len(queries))})
    bucket_of = entity_bucket(asked[ENTITY], buckets)
    refs = [ray.put(asked[bucket_of == b].reset_index(drop=True)) for b in range(buckets)]
    schema = _features_schema(spec)
    with _join_context():
        answered = (
            _read_filtered(
                store, signal_files, SIGNAL_COLUMNS, signal_predicates, schema=SCHEMAS[SIGNALS]
            )
            .map_batches(partial(_with_bucket, buckets=buckets), batch_format="pandas")
            .groupby(_BUCKET, num_partitions=buckets)
            .map_groups(
                partial(_bucket_features, spec=spec, queries=refs, schema=schema),
                batch_format="pandas",
            )
            .to_pandas()
        )
    if answered.empty:
        answered = schema.empty_table().to_pandas()
    out = answered.set_index(QUERY).reindex(np.arange(len(queries)))
    out[SEEN] = out[SEEN].fillna(False).astype(bool)
    for c in spec.feature_columns:
        out[c] = as_categories(out[c]) if c in spec.categories else out[c].astype("float64")
    return out[[*spec.feature_columns, SEEN]].set_axis(queries.index)

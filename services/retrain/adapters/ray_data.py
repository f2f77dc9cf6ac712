"""Ray Data plumbing of the label join: read the offline store, group by entity, join.

All Ray Data calls of the service live here; the per-entity join itself is the pure
`core.dataset.rows_for_entity`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pandas as pd
import pyarrow as pa
import ray
from pyarrow import fs
from ray.data import DataContext, Dataset

from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore
from services.retrain.core.dataset import (
    COMBINED_DTYPES,
    ENTITY,
    LABEL,
    OUTCOME_ID,
    TS,
    JoinSpec,
    combined_outcomes,
    combined_predictions,
    combined_signals,
    rows_for_entity,
)
from services.retrain.errors import NoTrainingData

Transform = Callable[[pd.DataFrame, JoinSpec], pd.DataFrame]

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
    numeric = {*spec.feature_columns, LABEL, TS}
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


def _size(store: OfflineStore, files: list[str]) -> int:
    infos = store.filesystem.get_file_info(files)
    return sum(i.size or 0 for i in infos if i.type == fs.FileType.File)


def _read(store: OfflineStore, kind: str, transform: Transform, spec: JoinSpec) -> Dataset | None:
    files = store.files(kind)
    if not files:
        return None
    blocks = max(1, min(len(files), math.ceil(_size(store, files) / BYTES_PER_READ_TASK)))
    return ray.data.read_parquet(
        files, filesystem=store.filesystem, override_num_blocks=blocks
    ).map_batches(
        partial(_as_arrow, transform=transform, spec=spec, schema=COMBINED_SCHEMA),
        batch_format="pandas",
    )


def build_training_frame(
    store: OfflineStore, spec: JoinSpec, *, partitions: int | None = None
) -> pd.DataFrame:
    """Labelled, point-in-time rows of one model from the offline store.

    Reads signals, outcomes and predictions with `ray.data.read_parquet`, maps each to
    one combined schema, unions them, groups by entity and joins each entity with
    `rows_for_entity`. Duplicates are removed per entity: event ids derive from
    content that includes the entity, so per-entity dedup is global dedup.

    Args:
        store: the offline store to read.
        spec: the model's join spec.
        partitions: hash partitions of the groupby shuffle; None sizes them by data,
            one per 64 MiB (measured on 2 cores with 2,400 labels: 1 partition joins in
            ~1.2 s, 4 partitions in ~8 s, all overhead).

    Returns:
        A pandas frame with `spec.columns`, ordered by as-of time then outcome id
        (numpy dtypes: LightGBM rejects Arrow-backed ones).

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
            partitions = max(1, math.ceil(_size(store, stored) / BYTES_PER_READ_TASK))
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
    if frame.empty:
        return frame.reindex(columns=spec.columns)
    # Arrow stores NaN as null; a block whose column is all null comes back as object
    # None. Cast numbers back, then order canonically (partitions arrive in any order).
    numeric = {c: "float64" for c in [*spec.feature_columns, LABEL, TS]}
    frame = frame[spec.columns].astype(numeric)
    return frame.sort_values([TS, OUTCOME_ID], kind="stable").reset_index(drop=True)

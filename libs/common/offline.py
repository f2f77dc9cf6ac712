"""The offline store: Parquet files of signals, outcomes and predictions, by event date.

Layout (issue 7): `{root}/{kind}/date=YYYY-MM-DD/{name}.parquet`, the date being the
UTC date of each row's `ts` (event time). A batch is split by date and each part is
written whole to a temporary file and renamed into place, under the batch's name, so a
replayed batch rewrites the same files. Compaction merges one date's files into one;
readers deduplicate, so the short overlap while it swaps files never shows twice.
Paths go through pyarrow filesystems, so `s3://...` works as well as a folder.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs

from libs.common.schemas import Signal

SIGNALS = "signals"
OUTCOMES = "outcomes"
PREDICTIONS = "predictions"

SCHEMAS: dict[str, pa.Schema] = {
    SIGNALS: pa.schema(
        [
            ("event_id", pa.string()),
            ("source", pa.string()),
            ("schema_version", pa.int64()),
            ("entity_id", pa.string()),
            ("ts", pa.float64()),
            ("fields_json", pa.string()),
            # Lineage (issue 7): when ingest accepted the row (epoch seconds) and where it
            # was consumed from; rows not from Kafka have topic "", partition and offset -1.
            ("arrival_ts", pa.float64()),
            ("topic", pa.string()),
            ("partition", pa.int64()),
            ("offset", pa.int64()),
        ]
    ),
    OUTCOMES: pa.schema(
        [
            ("event_id", pa.string()),
            ("model", pa.string()),
            ("entity_id", pa.string()),
            ("ts", pa.float64()),
            ("label", pa.float64()),
            ("prediction_id", pa.string()),
        ]
    ),
    PREDICTIONS: pa.schema(
        [
            ("event_id", pa.string()),
            ("model", pa.string()),
            ("version", pa.string()),
            ("variant", pa.string()),
            ("entity_id", pa.string()),
            ("ts", pa.float64()),
            ("score", pa.float64()),
            ("features_json", pa.string()),
        ]
    ),
}

DATE_PREFIX = "date="
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_KAFKA_KEY = ["topic", "partition", "offset"]
# Compacted files get this prefix; it sorts before batch names, so row order in a
# listing stays "older, merged rows first".
_COMPACTED = "compacted-"


def signal_row(signal: Signal, *, topic: str, partition: int, offset: int) -> dict[str, Any]:
    """One SIGNALS row of `signal`, consumed at (`topic`, `partition`, `offset`).

    `arrival_ts` is `ingested_at`, else `produced_at` (a record from before ingest
    stamped arrivals). Rows not from Kafka pass topic "", partition -1, offset -1.
    """
    arrival = signal.ingested_at or signal.produced_at
    return {
        "event_id": signal.event_id,
        "source": signal.source,
        "schema_version": signal.schema_version,
        "entity_id": signal.entity_id,
        "ts": signal.event_time.timestamp(),
        "fields_json": fields_json(signal.fields),
        "arrival_ts": arrival.timestamp(),
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }


def signal_table(
    *,
    event_ids: Sequence[str],
    sources: Sequence[str],
    schema_versions: Sequence[int],
    entity_ids: Sequence[str],
    ts: Sequence[float],
    fields: Sequence[Mapping[str, Any]],
    arrival_ts: Sequence[float],
    topic: str,
    partitions: Sequence[int],
    offsets: Sequence[int],
) -> pa.Table:
    """SIGNALS rows given column by column (times as epoch seconds), as `signal_row`
    gives them one by one: the features service writes every signal it consumes, and a
    dict per row was most of that cost.
    """
    columns: dict[str, Sequence[Any]] = {
        "event_id": event_ids,
        "source": sources,
        "schema_version": schema_versions,
        "entity_id": entity_ids,
        "ts": ts,
        "fields_json": [fields_json(f) for f in fields],
        "arrival_ts": arrival_ts,
        "topic": [topic] * len(event_ids),
        "partition": partitions,
        "offset": offsets,
    }
    return pa.table(columns, schema=SCHEMAS[SIGNALS])


def fields_json(fields: Mapping[str, Any]) -> str:
    """A signal's fields as stored: JSON with sorted keys (orjson: a tenth of json's time;
    NaN and infinities are written as null, which readers take as missing, as they do NaN).
    """
    try:
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an int beyond 64 bits: orjson refuses it, json does not
        return json.dumps(fields, sort_keys=True)


def date_of(ts: float) -> str:
    """The UTC date (YYYY-MM-DD) of epoch seconds `ts`: the date folder of a row."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class CompactionResult:
    """What `compact` did to one date folder.

    `merged` lists the input files (empty when the folder was left alone), `path` the
    file written (None when nothing was written), `rows` the rows it holds and
    `dropped` the duplicate rows removed.
    """

    kind: str
    date: str
    merged: tuple[str, ...] = ()
    path: str | None = None
    rows: int = 0
    dropped: int = 0

    @property
    def files_merged(self) -> int:
        return len(self.merged)


class OfflineStore:
    """Parquet files under `root`; `include` adds read-only roots on the same filesystem
    (the embedded stack's synthetic bootstrap history) to what `files` lists.
    """

    def __init__(self, root: str | Path, *, include: Sequence[str | Path] = ()) -> None:
        root_s = str(root)
        if "://" in root_s:
            self._fs, self._root = fs.FileSystem.from_uri(root_s)
        else:
            self._fs, self._root = fs.LocalFileSystem(), str(Path(root_s).resolve())
        self._include = [OfflineStore(r) for r in include]

    @property
    def root(self) -> str:
        return self._root

    @property
    def filesystem(self) -> fs.FileSystem:
        return self._fs

    def dir(self, kind: str) -> str:
        return f"{self._root}/{kind}"

    def date_dir(self, kind: str, date: str) -> str:
        """The folder of `kind`'s rows whose event time falls on `date` (UTC)."""
        if not _DATE.fullmatch(date):
            raise ValueError(f"date {date!r} is not YYYY-MM-DD; pass e.g. '2026-11-22'")
        return f"{self.dir(kind)}/{DATE_PREFIX}{date}"

    def append(
        self, kind: str, rows: Sequence[dict[str, Any]], *, name: str | None = None
    ) -> list[str]:
        """Write `rows` of `kind`, one Parquet file per UTC date of their `ts`.

        Each file is written to a temporary name and renamed into place. Every date
        folder gets the same file name, so writing the same batch again (a replay)
        rewrites the same files instead of adding copies.

        Args:
            kind: SIGNALS, OUTCOMES or PREDICTIONS.
            rows: rows of `SCHEMAS[kind]`; each needs a finite `ts`.
            name: the batch's file name without suffix; a random one when None.

        Returns:
            The paths written, sorted (empty for no rows).
        """
        if not rows:
            return []
        for row in rows:
            ts = row.get("ts")
            if not isinstance(ts, int | float) or not math.isfinite(ts):
                raise ValueError(
                    f"{kind} row {row.get('event_id')!r} has ts {ts!r}; need epoch seconds"
                )
        return self.append_table(
            kind, pa.Table.from_pylist(list(rows), schema=SCHEMAS[kind]), name=name
        )

    def append_table(self, kind: str, table: pa.Table, *, name: str | None = None) -> list[str]:
        """`append` of rows given as a table of `SCHEMAS[kind]` (no dict per row).

        Raises:
            ValueError: a row without a finite `ts`.
        """
        if table.num_rows == 0:
            return []
        name = name or uuid.uuid4().hex
        ts = table.column("ts").to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isfinite(ts).all():
            bad = int(np.flatnonzero(~np.isfinite(ts))[0])
            raise ValueError(
                f"{kind} row {table.column('event_id')[bad].as_py()!r} has ts "
                f"{ts[bad]!r}; need epoch seconds"
            )
        day = np.floor(ts / 86400.0)
        written = []
        for d in np.unique(day).tolist():
            part = table if day[0] == day[-1] == d else table.filter(pa.array(day == d))
            folder = self.date_dir(kind, date_of(d * 86400.0))
            written.append(self._write(folder, f"{name}.parquet", part))
        return sorted(written)

    def files(
        self, kind: str, *, since: float | None = None, until: float | None = None
    ) -> list[str]:
        """Parquet files of `kind` here and in the included roots.

        Date folders entirely outside [`since`, `until`] (epoch seconds, compared by
        UTC date, inclusive) are not listed; files outside any date folder (written
        before the store was partitioned) always are. Rows are not filtered: a
        listed file may still hold rows outside the window.
        """
        low = date_of(since) if since is not None else None
        high = date_of(until) if until is not None else None
        own: list[str] = []
        for info in self._fs.get_file_info(fs.FileSelector(self.dir(kind), allow_not_found=True)):
            base = info.base_name
            if info.type == fs.FileType.File:
                if _is_data(base):
                    own.append(info.path)
                continue
            if info.type != fs.FileType.Directory:
                continue
            date = base.removeprefix(DATE_PREFIX) if base.startswith(DATE_PREFIX) else None
            if date is not None and _DATE.fullmatch(date):
                if (low is not None and date < low) or (high is not None and date > high):
                    continue
            own.extend(self._data_files(info.path, recursive=True))
        own.sort()
        return own + [
            f for other in self._include for f in other.files(kind, since=since, until=until)
        ]

    def read(self, kind: str) -> pa.Table:
        """All rows of `kind`, deduplicated (small data; training uses Ray Data).

        Signals consumed from Kafka are deduplicated by (topic, partition, offset): two
        offsets holding the same event id are two records ingest accepted, and both
        count. Other signals, and outcomes and predictions, by event id.
        """
        return _dedupe(kind, self._load(kind, self.files(kind)))

    def dates(self, kind: str) -> list[str]:
        """The dates (YYYY-MM-DD) that have a date folder of `kind` under this root."""
        sel = fs.FileSelector(self.dir(kind), allow_not_found=True)
        return sorted(
            i.base_name.removeprefix(DATE_PREFIX)
            for i in self._fs.get_file_info(sel)
            if i.type == fs.FileType.Directory
            and i.base_name.startswith(DATE_PREFIX)
            and _DATE.fullmatch(i.base_name.removeprefix(DATE_PREFIX))
        )

    def compact(self, kind: str, date: str) -> CompactionResult:
        """Merge the files of one date folder of `kind` (this root only) into one.

        The merged file is deduplicated as `read` does, sorted (signals by topic,
        partition and offset; other kinds by `ts`), written under a new unique name
        and renamed into place before the inputs are deleted, so a reader sees every
        row at every moment (and `read` drops the overlap). Only the files merged are
        deleted: a file written meanwhile stays, and so does an input rewritten while
        it was being merged (a replay). A folder with at most one file is left alone,
        so compacting twice is the same as once.
        """
        folder = self.date_dir(kind, date)
        inputs = {i.path: i for i in self._file_infos(folder)}
        if len(inputs) < 2:
            return CompactionResult(kind, date)
        paths = sorted(inputs)
        table = self._load(kind, paths)
        merged = _sorted(kind, _dedupe(kind, table))
        path = self._write(folder, f"{_COMPACTED}{uuid.uuid4().hex}.parquet", merged)
        # Re-stat before deleting: an input replaced since it was read holds rows that
        # may not be in the merged file, so it stays for the next compaction.
        for now in self._fs.get_file_info(paths):
            before = inputs[now.path]
            if (now.mtime, now.size) == (before.mtime, before.size):
                self._fs.delete_file(now.path)
        return CompactionResult(
            kind,
            date,
            merged=tuple(paths),
            path=path,
            rows=merged.num_rows,
            dropped=table.num_rows - merged.num_rows,
        )

    def compact_all(self, kind: str, *, before: float) -> list[CompactionResult]:
        """`compact` every date folder of `kind` strictly before the UTC date of `before`.

        Today's folder is still being written to, so callers pass now.
        """
        cutoff = date_of(before)
        return [self.compact(kind, d) for d in self.dates(kind) if d < cutoff]

    # internals ----------------------------------------------------------------------
    def _write(self, folder: str, file_name: str, table: pa.Table) -> str:
        self._fs.create_dir(folder, recursive=True)
        final = f"{folder}/{file_name}"
        tmp = f"{folder}/.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=self._fs)
        self._fs.move(tmp, final)
        return final

    def _file_infos(self, folder: str, *, recursive: bool = False) -> list[fs.FileInfo]:
        sel = fs.FileSelector(folder, allow_not_found=True, recursive=recursive)
        return [
            i
            for i in self._fs.get_file_info(sel)
            if i.type == fs.FileType.File and _is_data(i.base_name)
        ]

    def _data_files(self, folder: str, *, recursive: bool = False) -> list[str]:
        return [i.path for i in self._file_infos(folder, recursive=recursive)]

    def _load(self, kind: str, files: Sequence[str]) -> pa.Table:
        # One explicit schema and no partitioning: files written before a column existed
        # read it as null, and `date=` folders add no column.
        if not files:
            return SCHEMAS[kind].empty_table()
        dataset = ds.dataset(
            list(files), schema=SCHEMAS[kind], format="parquet", filesystem=self._fs
        )
        return dataset.to_table()


def _is_data(base_name: str) -> bool:
    return base_name.endswith(".parquet") and not base_name.startswith((".", "_"))


def _dedupe(kind: str, table: pa.Table) -> pa.Table:
    """`table` without repeated rows, first occurrence kept, order unchanged."""
    if table.num_rows == 0:
        return table
    if kind != SIGNALS:
        keep = ~table.select(["event_id"]).to_pandas().duplicated().to_numpy()
        return table.filter(pa.array(keep))
    df = table.select(["event_id", *_KAFKA_KEY]).to_pandas()
    kafka = (df["offset"].notna() & (df["offset"] >= 0)).to_numpy()
    repeated = np.zeros(len(df), dtype=bool)
    repeated[kafka] = df[kafka].duplicated(_KAFKA_KEY).to_numpy()
    # Rows without an offset (bootstrap history, files from before lineage) by event id.
    repeated[~kafka] = df[~kafka].duplicated(["event_id"]).to_numpy()
    return table.filter(pa.array(~repeated))


def _sorted(kind: str, table: pa.Table) -> pa.Table:
    keys = [*_KAFKA_KEY, "ts", "event_id"] if kind == SIGNALS else ["ts", "event_id"]
    return table.sort_by([(k, "ascending") for k in keys])


__all__ = [
    "OUTCOMES",
    "PREDICTIONS",
    "SCHEMAS",
    "SIGNALS",
    "CompactionResult",
    "OfflineStore",
    "date_of",
    "fields_json",
    "signal_row",
    "signal_table",
]

"""The offline store: append-only Parquet files of signals, outcomes and predictions.

Files are written whole and renamed into place, named after the Kafka batch they
hold, so a replayed batch rewrites the same file; readers deduplicate by event id.
Paths go through pyarrow filesystems, so `s3://...` works as well as a folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

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

    def dir(self, kind: str) -> str:
        return f"{self._root}/{kind}"

    def append(self, kind: str, rows: Sequence[dict[str, Any]], *, name: str | None = None) -> str:
        """Write `rows` as one Parquet file of `kind`; `name` makes replays overwrite."""
        if not rows:
            return ""
        table = pa.Table.from_pylist(list(rows), schema=SCHEMAS[kind])
        folder = self.dir(kind)
        self._fs.create_dir(folder, recursive=True)
        final = f"{folder}/{name or uuid.uuid4().hex}.parquet"
        tmp = f"{folder}/.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=self._fs)
        self._fs.move(tmp, final)
        return final

    def files(self, kind: str) -> list[str]:
        sel = fs.FileSelector(self.dir(kind), allow_not_found=True)
        own = sorted(i.path for i in self._fs.get_file_info(sel) if i.path.endswith(".parquet"))
        return own + [f for other in self._include for f in other.files(kind)]

    def read(self, kind: str) -> pa.Table:
        """All rows of `kind`, deduplicated by event id (small data; training uses Ray Data)."""
        files = self.files(kind)
        if not files:
            return SCHEMAS[kind].empty_table()
        table = pq.read_table(files, filesystem=self._fs, schema=SCHEMAS[kind])
        df = table.to_pandas().drop_duplicates("event_id")
        return pa.Table.from_pandas(df, schema=SCHEMAS[kind], preserve_index=False)

    @property
    def filesystem(self) -> fs.FileSystem:
        return self._fs

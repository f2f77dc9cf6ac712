"""The offline store: date partitions, replay-safe atomic appends, pruning, dedup, compaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from libs.common.offline import (
    OUTCOMES,
    SCHEMAS,
    SIGNALS,
    CompactionResult,
    OfflineStore,
    date_of,
    signal_row,
    signal_table,
)
from libs.common.schemas import Signal

MIDNIGHT = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
DAY = 86_400.0


def _row(event_id: str, label: float = 1.0, *, ts: float = MIDNIGHT + 60) -> dict[str, object]:
    return {
        "event_id": event_id,
        "model": "m",
        "entity_id": "e",
        "ts": ts,
        "label": label,
        "prediction_id": None,
    }


def _signal(
    event_id: str, *, offset: int, partition: int = 0, ts: float = MIDNIGHT + 60
) -> dict[str, Any]:
    signal = Signal(
        source="sensors",
        entity_id="device-1",
        event_time=datetime.fromtimestamp(ts, UTC),
        fields={"temperature": 21.5},
        event_id=event_id,
    )
    return signal_row(signal, topic="signals.valid", partition=partition, offset=offset)


def _names(paths: list[str]) -> list[str]:
    return [str(Path(p).relative_to(Path(p).parents[2])) for p in paths]


def test_replayed_batch_overwrites_its_file(tmp_path: Path) -> None:
    """The same batch name written twice leaves one file and no duplicate rows."""
    store = OfflineStore(tmp_path)
    store.append(OUTCOMES, [_row("a"), _row("b")], name="outcomes-0-0")
    store.append(OUTCOMES, [_row("a"), _row("b")], name="outcomes-0-0")
    assert len(store.files(OUTCOMES)) == 1
    assert store.read(OUTCOMES).num_rows == 2


def test_included_roots_are_listed_and_deduplicated(tmp_path: Path) -> None:
    """Files of an included root are read too; an event id present in both counts once."""
    extra = OfflineStore(tmp_path / "bootstrap")
    extra.append(OUTCOMES, [_row("a"), _row("z")], name="bootstrap")
    store = OfflineStore(tmp_path / "live", include=[tmp_path / "bootstrap"])
    store.append(OUTCOMES, [_row("a")], name="live")
    assert len(store.files(OUTCOMES)) == 2
    assert sorted(store.read(OUTCOMES).column("event_id").to_pylist()) == ["a", "z"]
    assert len(OfflineStore(tmp_path / "live").files(OUTCOMES)) == 1


def test_a_batch_spanning_midnight_is_split_by_event_date(tmp_path: Path) -> None:
    """Rows go to the date folder of their `ts` (UTC), one file per date, same name."""
    store = OfflineStore(tmp_path)
    written = store.append(
        OUTCOMES,
        [_row("late", ts=MIDNIGHT - 1), _row("early", ts=MIDNIGHT), _row("x", ts=MIDNIGHT + 5)],
        name="outcomes-0-7",
    )
    assert _names(written) == [
        "outcomes/date=2026-11-21/outcomes-0-7.parquet",
        "outcomes/date=2026-11-22/outcomes-0-7.parquet",
    ]
    assert store.files(OUTCOMES) == written
    assert pq.read_table(written[0]).column("event_id").to_pylist() == ["late"]
    assert pq.read_table(written[1]).column("event_id").to_pylist() == ["early", "x"]
    # Nothing but the data files is left behind (temporary files were renamed).
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "outcomes-0-7.parquet",
        "outcomes-0-7.parquet",
    ]


def test_a_replay_spanning_midnight_rewrites_the_same_files(tmp_path: Path) -> None:
    """Replaying a batch that spans two dates rewrites both files, adds none."""
    store = OfflineStore(tmp_path)
    rows = [_row("a", ts=MIDNIGHT - 1), _row("b", ts=MIDNIGHT + 1)]
    first = store.append(OUTCOMES, rows, name="outcomes-0-0")
    again = store.append(OUTCOMES, rows, name="outcomes-0-0")
    assert first == again == store.files(OUTCOMES)
    assert store.read(OUTCOMES).num_rows == 2


def test_append_of_nothing_writes_nothing(tmp_path: Path) -> None:
    """No rows, no file and no folder."""
    store = OfflineStore(tmp_path)
    assert store.append(OUTCOMES, [], name="x") == []
    assert store.files(OUTCOMES) == []
    assert store.read(OUTCOMES).num_rows == 0


def test_a_row_without_a_time_is_refused(tmp_path: Path) -> None:
    """A row needs its event time to find its date folder."""
    with pytest.raises(ValueError, match=r"outcomes row 'a' has ts None"):
        OfflineStore(tmp_path).append(OUTCOMES, [{**_row("a"), "ts": None}])


@pytest.mark.parametrize(
    ("since", "until", "dates"),
    [
        (None, None, ["2026-11-20", "2026-11-21", "2026-11-22"]),
        (MIDNIGHT - 1, None, ["2026-11-21", "2026-11-22"]),
        (MIDNIGHT, None, ["2026-11-22"]),
        (None, MIDNIGHT - DAY, ["2026-11-20", "2026-11-21"]),
        (MIDNIGHT - DAY + 5, MIDNIGHT - 5, ["2026-11-21"]),
        (MIDNIGHT + DAY, None, []),
    ],
)
def test_files_skips_date_folders_outside_the_window(
    tmp_path: Path, since: float | None, until: float | None, dates: list[str]
) -> None:
    """`since`/`until` prune whole date folders (inclusive by date); legacy files stay."""
    store = OfflineStore(tmp_path)
    for day in (2, 1, 0):
        store.append(OUTCOMES, [_row(f"d{day}", ts=MIDNIGHT - day * DAY + 10)], name="b")
    # A file from before the store was partitioned sits directly under the kind.
    legacy = tmp_path / OUTCOMES / "legacy.parquet"
    pq.write_table(pa.Table.from_pylist([_row("old")], schema=SCHEMAS[OUTCOMES]), legacy)
    listed = store.files(OUTCOMES, since=since, until=until)
    assert str(legacy) in listed
    assert (
        sorted(Path(p).parent.name.removeprefix("date=") for p in listed if p != str(legacy))
        == dates
    )


def test_legacy_files_without_lineage_columns_are_read(tmp_path: Path) -> None:
    """A signal file written before `arrival_ts`/`topic`/`partition`/`offset` reads them as
    null and its rows are deduplicated by event id."""
    store = OfflineStore(tmp_path)
    old = pa.schema([f for f in SCHEMAS[SIGNALS] if f.name in SCHEMAS[SIGNALS].names[:6]])
    row = {k: v for k, v in _signal("a", offset=1).items() if k in old.names}
    (tmp_path / SIGNALS).mkdir()
    pq.write_table(pa.Table.from_pylist([row, row], schema=old), tmp_path / SIGNALS / "x.parquet")
    table = store.read(SIGNALS)
    assert table.num_rows == 1
    assert table.column("offset").to_pylist() == [None]


def test_signal_row_carries_lineage() -> None:
    """`arrival_ts` is when ingest accepted the signal, else when it was produced."""
    produced = datetime(2026, 11, 22, 10, 0, 2, tzinfo=UTC)
    ingested = datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)
    signal = Signal(
        source="s",
        entity_id="e",
        event_time=datetime(2026, 11, 22, 10, tzinfo=UTC),
        produced_at=produced,
        fields={"b": 1, "a": "x"},
    )
    row = signal_row(signal, topic="signals.valid", partition=3, offset=41)
    assert row["arrival_ts"] == produced.timestamp()
    assert row["fields_json"] == '{"a":"x","b":1}'  # keys sorted, compact (orjson)
    assert (row["topic"], row["partition"], row["offset"]) == ("signals.valid", 3, 41)
    stamped = signal.model_copy(update={"ingested_at": ingested})
    assert signal_row(stamped, topic="", partition=-1, offset=-1)["arrival_ts"] == (
        ingested.timestamp()
    )


def test_signals_dedupe_by_kafka_position_else_by_event_id(tmp_path: Path) -> None:
    """Two offsets with one event id are two deliveries ingest accepted (both count);
    the same offset twice is a redelivery (counts once); rows without an offset
    (synthetic history) are deduplicated by event id."""
    store = OfflineStore(tmp_path)
    synthetic = {**_signal("s", offset=-1), "topic": "", "partition": -1}
    store.append(SIGNALS, [_signal("a", offset=1), _signal("a", offset=2), synthetic], name="b1")
    store.append(SIGNALS, [_signal("a", offset=2), _signal("a", offset=2, partition=1)], name="b2")
    store.append(SIGNALS, [synthetic], name="b3")
    table = store.read(SIGNALS)
    assert sorted(
        zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True)
    ) == [
        (-1, -1),
        (0, 1),
        (0, 2),
        (1, 2),
    ]


def test_compaction_merges_sorts_dedupes_and_is_idempotent(tmp_path: Path) -> None:
    """One date's files become one sorted file without duplicates; again is a no-op."""
    store = OfflineStore(tmp_path)
    store.append(SIGNALS, [_signal("c", offset=3), _signal("a", offset=1)], name="b1")
    store.append(SIGNALS, [_signal("a", offset=1), _signal("b", offset=2)], name="b2")
    store.append(SIGNALS, [_signal("y", offset=9, ts=MIDNIGHT - 1)], name="b2")
    result = store.compact(SIGNALS, "2026-11-22")
    assert (result.files_merged, result.rows, result.dropped) == (2, 3, 1)
    assert result.path is not None
    day = [p for p in store.files(SIGNALS) if "date=2026-11-22" in p]
    assert day == [result.path]
    assert pq.read_table(result.path).column("offset").to_pylist() == [1, 2, 3]
    assert store.read(SIGNALS).num_rows == 4
    # A second run, and a date with a single file, are left alone.
    assert store.compact(SIGNALS, "2026-11-22") == CompactionResult(SIGNALS, "2026-11-22")
    assert store.compact(SIGNALS, "2026-11-21").files_merged == 0
    assert store.files(SIGNALS)[1:] == [result.path]


def test_compaction_sorts_outcomes_by_time(tmp_path: Path) -> None:
    """Outcomes and predictions are merged in event-time order, deduplicated by id."""
    store = OfflineStore(tmp_path)
    store.append(OUTCOMES, [_row("b", ts=MIDNIGHT + 20), _row("a", ts=MIDNIGHT + 30)], name="1")
    store.append(OUTCOMES, [_row("c", ts=MIDNIGHT + 10), _row("a", ts=MIDNIGHT + 30)], name="2")
    result = store.compact(OUTCOMES, "2026-11-22")
    assert result.path is not None
    assert pq.read_table(result.path).column("event_id").to_pylist() == ["c", "b", "a"]


def test_a_file_written_during_compaction_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that lands after compaction listed its inputs is neither merged nor
    deleted, and an input rewritten meanwhile (a replay) is kept too."""
    store = OfflineStore(tmp_path)
    store.append(OUTCOMES, [_row("a")], name="1")
    store.append(OUTCOMES, [_row("b")], name="2")
    load = store._load

    def load_then_write(kind: str, files: list[str]) -> pa.Table:
        table = load(kind, files)
        # While the merge runs: a new batch arrives and batch "2" is replayed, larger.
        store.append(OUTCOMES, [_row("c")], name="3")
        store.append(OUTCOMES, [_row("b"), _row("d", label=0.0)], name="2")
        return table

    monkeypatch.setattr(store, "_load", load_then_write)
    result = store.compact(OUTCOMES, "2026-11-22")
    monkeypatch.undo()
    assert result.files_merged == 2
    names = sorted(Path(p).name for p in store.files(OUTCOMES))
    assert names == sorted([Path(str(result.path)).name, "2.parquet", "3.parquet"])
    assert sorted(store.read(OUTCOMES).column("event_id").to_pylist()) == ["a", "b", "c", "d"]


def test_compact_all_stops_before_the_given_date(tmp_path: Path) -> None:
    """Every date folder strictly before `before`'s date is compacted; that date is not."""
    store = OfflineStore(tmp_path)
    for day in (2, 1, 0):
        for batch in ("x", "y"):
            store.append(OUTCOMES, [_row(f"{day}{batch}", ts=MIDNIGHT - day * DAY)], name=batch)
    results = store.compact_all(OUTCOMES, before=MIDNIGHT + 5)
    assert [(r.date, r.files_merged, r.rows) for r in results] == [
        ("2026-11-20", 2, 2),
        ("2026-11-21", 2, 2),
    ]
    assert len(store.files(OUTCOMES, since=MIDNIGHT)) == 2


def test_compact_refuses_a_malformed_date(tmp_path: Path) -> None:
    """A date is YYYY-MM-DD, never a path."""
    with pytest.raises(ValueError, match=r"date '../x' is not YYYY-MM-DD"):
        OfflineStore(tmp_path).compact(OUTCOMES, "../x")


def test_files_are_readable_with_pyarrow_dataset(tmp_path: Path) -> None:
    """The store's file list, legacy files included, is one pyarrow dataset of the kind."""
    store = OfflineStore(tmp_path)
    store.append(SIGNALS, [_signal("a", offset=1), _signal("b", offset=2, ts=MIDNIGHT - 1)])
    dataset = ds.dataset(store.files(SIGNALS), schema=SCHEMAS[SIGNALS], format="parquet")
    table = dataset.to_table(filter=ds.field("ts") >= MIDNIGHT)
    assert table.column("event_id").to_pylist() == ["a"]
    # The whole tree also reads as a hive-partitioned dataset with a `date` column.
    hive = ds.dataset(tmp_path / SIGNALS, format="parquet", partitioning="hive")
    assert sorted(hive.to_table().column("date").to_pylist()) == [
        date_of(MIDNIGHT - 1),
        "2026-11-22",
    ]


def test_signal_table_holds_the_rows_signal_row_gives(tmp_path: Path) -> None:
    """The columnar rows the features service writes equal `signal_row`'s, field JSON
    included (a NaN is written as null, read as missing like NaN), and a batch spanning
    midnight lands in both date folders under the batch's name.
    """
    before = datetime(2026, 11, 22, 23, 59, 59, 500000, tzinfo=UTC)
    signals = [
        Signal(
            source="s",
            entity_id=f"e{i}",
            event_time=before + timedelta(seconds=i),
            fields={"z": i, "a": "x", "n": float("nan") if i == 1 else 0.5},
            ingested_at=before + timedelta(seconds=10 + i) if i else None,
        )
        for i in range(3)
    ]
    table = signal_table(
        event_ids=[s.event_id for s in signals],
        sources=[s.source for s in signals],
        schema_versions=[s.schema_version for s in signals],
        entity_ids=[s.entity_id for s in signals],
        ts=[s.event_time.timestamp() for s in signals],
        fields=[s.fields for s in signals],
        arrival_ts=[(s.ingested_at or s.produced_at).timestamp() for s in signals],
        topic="signals.valid",
        partitions=[2, 2, 3],
        offsets=[7, 8, 1],
    )
    rows = [
        signal_row(s, topic="signals.valid", partition=p, offset=o)
        for s, p, o in zip(signals, [2, 2, 3], [7, 8, 1], strict=True)
    ]
    assert table.to_pylist() == rows
    assert json.loads(rows[1]["fields_json"]) == {"a": "x", "n": None, "z": 1}

    store = OfflineStore(tmp_path)
    written = store.append_table(SIGNALS, table, name="batch-1")
    assert [Path(p).parent.name for p in written] == ["date=2026-11-22", "date=2026-11-23"]
    assert {Path(p).name for p in written} == {"batch-1.parquet"}
    assert sorted(store.read(SIGNALS).to_pylist(), key=lambda r: r["ts"]) == rows

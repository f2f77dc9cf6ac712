"""The outage spool on disk: accepted records wait here, fsynced, while the broker is
unreachable, and survive a restart of ingest.

An append-only log of segment files (`<seq>.seg`, frames of core/spool_format.py) and a
`committed` file naming the position up to which records were acknowledged by the
broker. Opening the spool recovers it: a torn or corrupt tail (a crash mid-append, a bad
disk) is cut off, saved beside the segment as `.corrupt-<offset>`, logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from libs.common.errors import DependencyUnavailable
from libs.common.observability import get_logger
from services.ingest.core.spool_format import SpooledRecord, encode, frame_length, scan

log = get_logger(__name__)

SPOOL_BYTES = Gauge("signalops_ingest_spool_bytes", "Bytes in the outage spool not yet published")
SPOOL_RECORDS = Gauge("signalops_ingest_spool_records", "Records in the outage spool")
SPOOL_OLDEST_AGE = Gauge(
    "signalops_ingest_spool_oldest_age_seconds", "Age of the oldest record in the outage spool"
)
SPOOL_APPENDED = Counter("signalops_ingest_spool_appended_total", "Records appended to the spool")
SPOOL_DRAINED = Counter(
    "signalops_ingest_spool_drained_total", "Spooled records acknowledged by the broker"
)
SPOOL_FULL = Counter(
    "signalops_ingest_spool_full_total", "Requests refused (503) because the spool was full"
)
SPOOL_DISCARDED = Counter(
    "signalops_ingest_spool_discarded_bytes_total",
    "Bytes of torn or corrupt spool tails cut off at recovery (saved as .corrupt files)",
)

_COMMITTED = "committed"


class SpoolFull(DependencyUnavailable):
    """The broker is unreachable and the spool holds `spool_max_bytes`: HTTP answers 503
    with Retry-After and the client keeps its records.

    Operator action: bring the broker back, or raise SIGNALOPS_SPOOL_MAX_BYTES.
    """

    def __init__(self, pending: int, incoming: int, limit: int) -> None:
        super().__init__(
            "kafka",
            f"spool full: {pending} bytes waiting + {incoming} incoming > {limit} "
            "(SIGNALOPS_SPOOL_MAX_BYTES); retry later",
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record starts: segment number and byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Records read from the committed position, and the position just past them."""

    records: list[SpooledRecord]
    end: Position
    size: int


class FileSpool:
    """Append-only, fsynced spool of records for the broker; one writer process.

    Args:
        directory: where segments and the committed position live (created).
        max_bytes: appends beyond this many pending bytes raise SpoolFull.
        segment_bytes: a segment larger than this is closed and a new one started,
            so drained segments can be deleted.
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = asyncio.Lock()
        self._pending_event = asyncio.Event()
        # [appended_at, records] per append: the oldest age without a per-record index.
        self._runs: deque[list[float]] = deque()
        self.pending_records = 0
        self.pending_bytes = 0
        self._appending = 0
        self.refusing = False  # the last append did not fit; cleared once records drain
        self._committed = Position(0, 0)
        self._active = 0
        self._active_size = 0
        self._file: int | None = None

    # ---- state ------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing waits in the spool and nothing is being appended: a new record may go
        straight to the broker without overtaking a spooled one."""
        return self.pending_records == 0 and self._appending == 0

    def oldest_age_s(self, now: float | None = None) -> float:
        if not self._runs:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self._runs[0][0])

    async def wait_pending(self) -> None:
        await self._pending_event.wait()

    # ---- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        """Create or recover the spool (blocking file work in a thread)."""
        async with self._lock:
            await asyncio.to_thread(self._recover)
        SPOOL_BYTES.set_function(lambda: self.pending_bytes)
        SPOOL_RECORDS.set_function(lambda: self.pending_records)
        SPOOL_OLDEST_AGE.set_function(self.oldest_age_s)
        if self.pending_records:
            self._pending_event.set()
            log.warning(
                "spool_recovered",
                records=self.pending_records,
                bytes=self.pending_bytes,
                directory=str(self.directory),
            )

    async def close(self) -> None:
        async with self._lock:
            if self._file is not None:
                os.close(self._file)
                self._file = None

    # ---- writing ----------------------------------------------------------------
    async def append(self, records: Sequence[SpooledRecord]) -> None:
        """Append `records` in order and fsync before returning (they are then accepted).

        Raises:
            SpoolFull: they do not fit in `max_bytes`; nothing was written.
            OSError: the disk failed; nothing of this call counts as written.
        """
        if not records:
            return
        frames = b"".join(encode(r) for r in records)
        self._appending += 1
        try:
            # Shielded: a cancelled request must not leave written frames uncounted.
            await asyncio.shield(self._append(frames, records[0].appended_at, len(records)))
        finally:
            self._appending -= 1

    async def _append(self, frames: bytes, appended_at: float, count: int) -> None:
        async with self._lock:
            if self.pending_bytes + len(frames) > self.max_bytes:
                SPOOL_FULL.inc()
                self.refusing = True
                raise SpoolFull(self.pending_bytes, len(frames), self.max_bytes)
            await asyncio.to_thread(self._write, frames)
            self._count(appended_at, count)
            self.pending_bytes += len(frames)
        SPOOL_APPENDED.inc(count)
        self._pending_event.set()

    # ---- draining ----------------------------------------------------------------
    async def read_batch(self, max_records: int, max_bytes: int = 4 * 1024 * 1024) -> SpoolBatch:
        """Up to `max_records` records from the committed position, oldest first."""
        async with self._lock:
            return await asyncio.to_thread(self._read, max_records, max_bytes)

    async def commit(self, batch: SpoolBatch) -> None:
        """Mark `batch` acknowledged: persist the position, delete drained segments."""
        async with self._lock:
            if batch.end != self._committed:
                await asyncio.to_thread(self._persist_position, batch.end)
            self._committed = batch.end
            self.pending_records -= len(batch.records)
            self.pending_bytes -= batch.size
            if batch.records:
                self.refusing = False
            left = len(batch.records)
            while left and self._runs:
                run = self._runs[0]
                taken = min(left, int(run[1]))
                run[1] -= taken
                left -= taken
                if run[1] == 0:
                    self._runs.popleft()
            if self.pending_records == 0:
                self._runs.clear()
                self._pending_event.clear()  # an append in progress sets it again
        SPOOL_DRAINED.inc(len(batch.records))

    # ---- blocking file work (worker thread, under the lock) --------------------------
    def _segment(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._runs.clear()  # counted again from the files (a reopened spool)
        self.pending_records = self.pending_bytes = 0
        committed = self._read_position()
        segments = [s for s in self._segments() if s >= committed.segment]
        for stale in (s for s in self._segments() if s < committed.segment):
            self._segment(stale).unlink(missing_ok=True)
        for seq in segments:
            path = self._segment(seq)
            buf = path.read_bytes()
            start = committed.offset if seq == committed.segment else 0
            found = scan(buf, min(start, len(buf)))
            if found.problem is not None:
                self._cut(path, buf, found.end, found.problem)
            offset = min(start, len(buf))
            for end, record in found.records:
                self._count(record.appended_at, 1)
                self.pending_bytes += end - offset
                offset = end
        self._committed = committed
        self._active = segments[-1] if segments else committed.segment
        self._open_active()

    def _count(self, appended_at: float, records: int) -> None:
        if self._runs and self._runs[-1][0] == appended_at:
            self._runs[-1][1] += records
        else:
            self._runs.append([appended_at, records])
        self.pending_records += records

    def _cut(self, path: Path, buf: bytes, end: int, problem: str) -> None:
        tail = buf[end:]
        saved = path.with_name(f"{path.name}.corrupt-{end}")
        saved.write_bytes(tail)
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
        SPOOL_DISCARDED.inc(len(tail))
        log.error(
            "spool_tail_cut",
            segment=str(path),
            problem=problem,
            offset=end,
            discarded_bytes=len(tail),
            saved_as=str(saved),
        )

    def _open_active(self) -> None:
        path = self._segment(self._active)
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active_size = os.fstat(self._file).st_size
        self._sync_directory()

    def _write(self, frames: bytes) -> None:
        if self._file is None:
            raise RuntimeError("FileSpool used before open()")
        if self._active_size and self._active_size + len(frames) > self.segment_bytes:
            os.close(self._file)
            self._active += 1
            self._open_active()
        try:
            written = 0
            while written < len(frames):
                written += os.write(self._file, frames[written:])
            os.fsync(self._file)
        except OSError:
            # Leave no half-written frame behind for the next append to follow.
            with contextlib.suppress(OSError):
                os.ftruncate(self._file, self._active_size)
            raise
        self._active_size += len(frames)

    def _read(self, max_records: int, max_bytes: int) -> SpoolBatch:
        pos = self._committed
        while True:
            path = self._segment(pos.segment)
            with open(path, "rb") as f:
                f.seek(pos.offset)
                buf = f.read(max_bytes)
                found = scan(buf, limit=max_records)  # not the whole read: a batch's worth
                if not found.records and found.problem == "torn" and len(buf) >= 8:
                    # One frame longer than max_bytes: read exactly that frame.
                    f.seek(pos.offset)
                    length = frame_length(int.from_bytes(buf[:4], "little"))
                    buf = f.read(8 + length)
                    found = scan(buf)
            records = found.records[:max_records]
            if records:
                end = records[-1][0]
                return SpoolBatch(
                    [r for _, r in records], Position(pos.segment, pos.offset + end), end
                )
            if pos.segment >= self._active:
                return SpoolBatch([], pos, 0)
            pos = Position(pos.segment + 1, 0)  # a drained, closed segment: the next one

    def _persist_position(self, end: Position) -> None:
        tmp = self.directory / f"{_COMMITTED}.tmp"
        with open(tmp, "w") as f:
            json.dump({"segment": end.segment, "offset": end.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / _COMMITTED)
        for seq in self._segments():
            if seq < end.segment:
                self._segment(seq).unlink(missing_ok=True)

    def _read_position(self) -> Position:
        path = self.directory / _COMMITTED
        if not path.exists():
            first = self._segments()
            return Position(first[0] if first else 0, 0)
        data = json.loads(path.read_text())
        return Position(int(data["segment"]), int(data["offset"]))

    def _sync_directory(self) -> None:
        # A new segment's directory entry must survive a crash too.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

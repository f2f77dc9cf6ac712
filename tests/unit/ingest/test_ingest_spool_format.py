"""The outage spool's frames and files: round trips, torn tails, CRC mismatches, recovery."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.core.spool_format import (
    FRAME_OVERHEAD,
    SpooledRecord,
    encode,
    encode_v0,
    scan,
)
from services.ingest.spool import FileSpool, SpoolFull

records = st.builds(
    SpooledRecord,
    topic=st.text(min_size=1, max_size=40),
    key=st.none() | st.text(max_size=40),
    kind=st.sampled_from(["Signal", "Outcome", "DeadLetter"]),
    value=st.binary(max_size=300),
    appended_at=st.floats(min_value=0, max_value=4e9),
    headers=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=60)), max_size=4).map(
        tuple
    ),
)


def record(n: int, *, at: float = 1000.0) -> SpooledRecord:
    return SpooledRecord("signals.valid", f"device-{n % 3}", "Signal", b'{"n": %d}' % n, at)


@given(st.lists(records, max_size=20))
def test_frames_round_trip(batch: list[SpooledRecord]) -> None:
    """Any records encode to frames that scan back to the same records, ending cleanly."""
    buf = b"".join(encode(r) for r in batch)
    found = scan(buf)
    assert [r for _, r in found.records] == batch
    assert (found.end, found.problem) == (len(buf), None)


@given(st.lists(records, min_size=1, max_size=10), st.data())
def test_a_torn_last_frame_is_detected_and_the_rest_kept(
    batch: list[SpooledRecord], data: st.DataObject
) -> None:
    """A write cut anywhere inside the last frame (a crash) leaves every earlier record
    intact, and `end` points where that frame began."""
    frames = [encode(r) for r in batch]
    whole = b"".join(frames[:-1])
    cut = data.draw(st.integers(1, len(frames[-1]) - 1))
    found = scan(whole + frames[-1][:cut])
    assert [r for _, r in found.records] == batch[:-1]
    assert (found.end, found.problem) == (len(whole), "torn")


@given(st.lists(records, min_size=1, max_size=10), st.data())
def test_a_flipped_bit_stops_the_scan_at_that_frame(
    batch: list[SpooledRecord], data: st.DataObject
) -> None:
    """One flipped bit in a frame's payload is a CRC mismatch: the records before it are
    returned, nothing from the damaged frame or after it."""
    frames = [encode(r) for r in batch]
    bad = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[bad])
    bit = data.draw(st.integers(8 * 8, 8 * len(frame) - 1))  # past length and CRC
    frame[bit // 8] ^= 1 << (bit % 8)
    buf = b"".join(frames[:bad]) + bytes(frame) + b"".join(frames[bad + 1 :])
    found = scan(buf)
    assert [r for _, r in found.records] == batch[:bad]
    assert found.end == sum(len(f) for f in frames[:bad])
    assert found.problem == "crc_mismatch"


def test_an_impossible_length_is_reported_not_trusted() -> None:
    """A length shorter than the header (a zeroed page) is a bad length, not a record."""
    good = encode(record(1))
    found = scan(good + b"\x00" * 64)
    assert [r for _, r in found.records] == [record(1)]
    assert (found.end, found.problem) == (len(good), "bad_length")


def test_a_consistent_crc_over_bad_inner_lengths_is_a_bad_payload() -> None:
    """A payload whose CRC matches but whose inner lengths overrun it is refused."""
    payload = encode(record(1))[8:FRAME_OVERHEAD]  # header only: lengths promise more
    word = (1 << 28 | len(payload)).to_bytes(4, "little")
    frame = word + zlib.crc32(payload, zlib.crc32(word)).to_bytes(4, "little")
    assert scan(frame + payload).problem == "bad_payload"


@given(st.lists(records, max_size=10), st.lists(records, max_size=10))
def test_frames_of_the_previous_format_are_read_and_new_ones_follow(
    old: list[SpooledRecord], new: list[SpooledRecord]
) -> None:
    """Unversioned frames (commit 5a176a7, no headers) scan back to their records without
    headers, and frames of the current version appended after them scan too."""
    buf = b"".join(encode_v0(r) for r in old) + b"".join(encode(r) for r in new)
    found = scan(buf)
    without_headers = [SpooledRecord(r.topic, r.key, r.kind, r.value, r.appended_at) for r in old]
    assert [r for _, r in found.records] == without_headers + new
    assert (found.end, found.problem) == (len(buf), None)


def test_a_flipped_version_bit_is_a_crc_mismatch_not_the_other_layout() -> None:
    """The current CRC covers the version: a frame whose version bit flipped to the
    previous format's is refused, not decoded with that format's layout."""
    frame = bytearray(encode(record(1)))
    frame[3] ^= 0x10  # bit 28 of the little-endian length word
    assert scan(bytes(frame)).problem == "crc_mismatch"


def test_a_scan_stops_at_its_limit() -> None:
    """`limit` records are decoded and `end` follows the last of them (a drain batch)."""
    frames = [encode(record(n)) for n in range(5)]
    found = scan(b"".join(frames), limit=2)
    assert [r for _, r in found.records] == [record(0), record(1)]
    assert (found.end, found.problem) == (len(frames[0]) + len(frames[1]), None)


def test_encode_refuses_a_kind_too_long_for_its_prefix() -> None:
    with pytest.raises(ValueError, match="too long to spool"):
        encode(SpooledRecord("t", None, "K" * 300, b"", 0.0))


# ---- the files (FileSpool): real disk in tmp_path, no broker ---------------------------


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def test_recovery_cuts_a_torn_tail_and_keeps_every_whole_record(tmp_path: Path) -> None:
    """After a crash mid-append the reopened spool holds the fsynced records, the torn
    bytes are cut off and saved beside the segment, and appends continue after them."""
    spool = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    await spool.open()
    await spool.append([record(n) for n in range(5)])
    await spool.close()
    [segment] = files(tmp_path, "*.seg")
    append_bytes(segment, encode(record(99))[:11])  # the crash: half a frame

    reopened = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    await reopened.open()
    assert reopened.pending_records == 5
    [saved] = files(tmp_path, "*.corrupt-*")
    assert saved.read_bytes() == encode(record(99))[:11]
    await reopened.append([record(5)])
    batch = await reopened.read_batch(100)
    assert [r.value for r in batch.records] == [record(n).value for n in range(6)]
    await reopened.close()


async def test_recovery_sets_aside_everything_from_a_corrupt_frame_on(tmp_path: Path) -> None:
    """A flipped bit (a bad disk) stops recovery at that frame: the records before it are
    kept, the frame and what follows are saved for the operator, never replayed."""
    spool = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    await spool.open()
    for n in range(3):
        await spool.append([record(n)])
    await spool.close()
    [segment] = files(tmp_path, "*.seg")
    frame = len(encode(record(0)))
    flip_byte(segment, frame + 20)  # inside the second frame's payload

    reopened = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    await reopened.open()
    batch = await reopened.read_batch(10)
    assert [r.value for r in batch.records] == [record(0).value]
    [saved] = files(tmp_path, f"*.corrupt-{frame}")
    assert len(saved.read_bytes()) == 2 * frame
    await reopened.close()


async def test_a_restart_resumes_after_the_committed_position(tmp_path: Path) -> None:
    """Records committed (acknowledged by the broker) before a restart are not read
    again; the rest come back in order, across rotated segments, and drained segments
    are deleted."""
    spool = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    await spool.open()
    for n in range(10):
        await spool.append([record(n)])
    assert len(files(tmp_path, "*.seg")) > 2  # rotated
    first = await spool.read_batch(4)  # stops at the first segment's end
    sent = len(first.records)
    assert 0 < sent <= 4
    await spool.commit(first)
    await spool.close()

    reopened = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    await reopened.open()
    assert reopened.pending_records == 10 - sent
    rest: list[bytes] = []
    while reopened.pending_records:  # a batch stops at a segment's end
        batch = await reopened.read_batch(100)
        rest += [r.value for r in batch.records]
        await reopened.commit(batch)
    assert rest == [record(n).value for n in range(sent, 10)]
    await reopened.close()


async def test_drained_segments_are_deleted_and_the_spool_reads_empty(tmp_path: Path) -> None:
    """Draining everything leaves only the active segment and zero pending bytes."""
    spool = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    await spool.open()
    for n in range(10):
        await spool.append([record(n)])
    drained: list[bytes] = []
    while spool.pending_records:
        batch = await spool.read_batch(3)
        drained += [r.value for r in batch.records]
        await spool.commit(batch)
    assert drained == [record(n).value for n in range(10)]
    assert (spool.pending_bytes, spool.idle, len(files(tmp_path, "*.seg"))) == (0, True, 1)
    await spool.close()


async def test_an_append_beyond_max_bytes_is_refused_whole(tmp_path: Path) -> None:
    """A batch that does not fit raises SpoolFull and writes nothing of itself."""
    frame = len(encode(record(0)))
    spool = FileSpool(tmp_path, max_bytes=3 * frame, segment_bytes=1 << 20)
    await spool.open()
    await spool.append([record(0), record(1)])
    with pytest.raises(SpoolFull, match="SIGNALOPS_SPOOL_MAX_BYTES"):
        await spool.append([record(2), record(3)])
    assert spool.pending_records == 2
    batch = await spool.read_batch(10)
    assert [r.value for r in batch.records] == [record(0).value, record(1).value]
    await spool.close()


async def test_oldest_age_follows_the_oldest_pending_append(tmp_path: Path) -> None:
    """The age metric reads the first pending append's time; draining it moves on."""
    spool = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    await spool.open()
    await spool.append([record(0, at=100.0), record(1, at=100.0)])
    await spool.append([record(2, at=160.0)])
    assert spool.oldest_age_s(now=200.0) == 100.0
    await spool.commit(await spool.read_batch(2))
    assert spool.oldest_age_s(now=200.0) == 40.0
    await spool.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=8), st.integers(1, 5))
def test_appends_and_drains_in_any_sizes_keep_order(
    tmp_path_factory: pytest.TempPathFactory, appends: list[int], step: int
) -> None:
    """Whatever the append and drain batch sizes and segment rotation, records come out
    once each, in the order they went in."""
    import asyncio

    async def run() -> list[bytes]:
        spool = FileSpool(tmp_path_factory.mktemp("spool"), max_bytes=1 << 20, segment_bytes=150)
        await spool.open()
        n = 0
        for size in appends:
            await spool.append([record(n + i) for i in range(size)])
            n += size
        out: list[bytes] = []
        while spool.pending_records:
            batch = await spool.read_batch(step)
            out += [r.value for r in batch.records]
            await spool.commit(batch)
        await spool.close()
        return out

    assert asyncio.run(run()) == [record(n).value for n in range(sum(appends))]


async def test_a_spool_of_the_previous_format_is_recovered_and_appended_to(
    tmp_path: Path,
) -> None:
    """A segment of the previous release's frames is counted at open, torn tail and all,
    and new frames are appended after its intact records."""
    segment = tmp_path / f"{0:012d}.seg"
    segment.write_bytes(b"".join(encode_v0(record(n)) for n in range(3)) + encode_v0(record(3))[:9])
    spool = FileSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    await spool.open()
    assert spool.pending_records == 3
    assert spool.pending_bytes == 3 * len(encode_v0(record(0)))
    await spool.append([record(4)])
    batch = await spool.read_batch(10)
    assert [r.value for r in batch.records] == [record(n).value for n in (0, 1, 2, 4)]
    await spool.close()

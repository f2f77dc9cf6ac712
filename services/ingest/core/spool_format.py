"""The outage spool's on-disk frame: length-prefixed, CRC-checked records (pure, no I/O).

A segment file is a run of frames. A crash can leave the last frame torn (a partial
write) and a bad disk can flip bits; `scan` reports where the intact run ends, so the
adapter truncates there instead of replaying garbage.

    frame   = length:u32 | crc32(payload):u32 | payload        (little endian)
    payload = appended_at:f64 | kind_len:u8 | topic_len:u16 | key_len:i32 (-1: no key)
              | kind | topic | key | value
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal

_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<dBHi")
FRAME_OVERHEAD = _FRAME.size + _HEAD.size
# A frame longer than this is a corrupt length, not a record: the service's own
# records are capped far below (max_record_bytes, dead_letter_max_bytes).
MAX_FRAME_BYTES = 64 * 1024 * 1024

Problem = Literal["torn", "crc_mismatch", "bad_length", "bad_payload"]


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One accepted record waiting for the broker.

    Attributes:
        topic: where it is to be published.
        key: its Kafka key (entity id or source), or None.
        kind: the message class name ("Signal", "Outcome", "DeadLetter").
        value: the message's JSON bytes, exactly as they would have been published.
        appended_at: when it entered the spool (Unix seconds), for the oldest-age metric.
    """

    topic: str
    key: str | None
    kind: str
    value: bytes
    appended_at: float


@dataclass(frozen=True, slots=True)
class Scan:
    """What `scan` found in a buffer.

    Attributes:
        records: each intact record with the offset just past its frame.
        end: offset just past the last intact frame (where a writer may append).
        problem: why scanning stopped before the buffer's end, or None at a clean end.
    """

    records: list[tuple[int, SpooledRecord]]
    end: int
    problem: Problem | None


def encode(record: SpooledRecord) -> bytes:
    """The frame of one record.

    Raises:
        ValueError: a field too long for its length prefix.
    """
    kind, topic = record.kind.encode(), record.topic.encode()
    key = b"" if record.key is None else record.key.encode()
    key_len = -1 if record.key is None else len(key)
    if len(kind) > 0xFF or len(topic) > 0xFFFF:
        raise ValueError(f"kind {record.kind!r} or topic {record.topic!r} too long to spool")
    payload = b"".join(
        (_HEAD.pack(record.appended_at, len(kind), len(topic), key_len), kind, topic, key)
    )
    payload += record.value
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_FRAME_BYTES} to spool")
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> SpooledRecord:
    """The record inside one CRC-checked payload.

    Raises:
        ValueError: the payload's inner lengths do not add up.
    """
    if len(payload) < _HEAD.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than its header")
    appended_at, kind_len, topic_len, key_len = _HEAD.unpack_from(payload)
    pos = _HEAD.size
    kind = payload[pos : pos + kind_len].decode()
    pos += kind_len
    topic = payload[pos : pos + topic_len].decode()
    pos += topic_len
    key: str | None = None
    if key_len >= 0:
        key = payload[pos : pos + key_len].decode()
        pos += key_len
    if pos > len(payload) or key_len < -1:
        raise ValueError("payload lengths exceed the payload")
    return SpooledRecord(topic, key, kind, payload[pos:], appended_at)


def scan(buf: bytes, start: int = 0) -> Scan:
    """Decode the frames of `buf` from `start` until its end or the first bad frame.

    Args:
        buf: segment bytes.
        start: offset of the first frame to read.

    Returns:
        The intact records and where they end; `problem` says why a tail was left.
    """
    records: list[tuple[int, SpooledRecord]] = []
    pos = start
    while pos < len(buf):
        if len(buf) - pos < _FRAME.size:
            return Scan(records, pos, "torn")
        length, crc = _FRAME.unpack_from(buf, pos)
        if length < _HEAD.size or length > MAX_FRAME_BYTES:
            return Scan(records, pos, "bad_length")
        end = pos + _FRAME.size + length
        if end > len(buf):
            return Scan(records, pos, "torn")
        payload = buf[pos + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            return Scan(records, pos, "crc_mismatch")
        try:
            record = decode_payload(payload)
        except (ValueError, UnicodeDecodeError):
            return Scan(records, pos, "bad_payload")
        records.append((end, record))
        pos = end
    return Scan(records, pos, None)

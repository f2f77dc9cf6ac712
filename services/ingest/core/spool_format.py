"""The outage spool's on-disk frame: length-prefixed, CRC-checked records (pure, no I/O).

A segment file is a run of frames. A crash can leave the last frame torn (a partial
write) and a bad disk can flip bits; `scan` reports where the intact run ends, so the
adapter truncates there instead of replaying garbage.

    frame    = word:u32 | crc:u32 | payload                      (little endian)
    word     = version << 28 | length(payload)             (length ≤ MAX_FRAME_BYTES)

    version 0 (commit 5a176a7, read only): crc = crc32(payload)
    payload  = appended_at:f64 | kind_len:u8 | topic_len:u16 | key_len:i32 (-1: no key)
               | kind | topic | key | value
    version 1 (written): crc = crc32(word | payload), so a flipped version bit is a
               mismatch, never the other layout read over the same bytes
    payload  = appended_at:f64 | kind_len:u8 | topic_len:u16 | key_len:i32 (-1: no key)
               | headers_len:u32 | kind | topic | key | headers | value
    headers  = (name_len:u16 | value_len:u32 | name | value)*

Frames of both versions may share a segment: a spool left by the previous release is
recovered and drained as it is, and new frames are appended after it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal

_FRAME = struct.Struct("<II")
_HEAD_V0 = struct.Struct("<dBHi")
_HEAD = struct.Struct("<dBHiI")
_HEADER = struct.Struct("<HI")
_LENGTH_MASK = (1 << 28) - 1
VERSION = 1
FRAME_OVERHEAD = _FRAME.size + _HEAD.size
# A frame longer than this is a corrupt length, not a record: the service's own
# records are capped far below (max_record_bytes, dead_letter_max_bytes).
MAX_FRAME_BYTES = 64 * 1024 * 1024

Problem = Literal["torn", "crc_mismatch", "bad_length", "bad_payload"]
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One accepted record waiting for the broker.

    Attributes:
        topic: where it is to be published.
        key: its Kafka key (entity id or source), or None.
        kind: the message class name ("Signal", "Outcome", "DeadLetter").
        value: the message's JSON bytes, exactly as they would have been published.
        appended_at: when it entered the spool (Unix seconds), for the oldest-age metric.
        headers: the Kafka headers it is published with (schema, the request's trace
            context); empty for a record spooled by version 0, which kept none.
    """

    topic: str
    key: str | None
    kind: str
    value: bytes
    appended_at: float
    headers: Headers = ()


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
    """The (current version's) frame of one record.

    Raises:
        ValueError: a field too long for its length prefix.
    """
    kind, topic = record.kind.encode(), record.topic.encode()
    key = b"" if record.key is None else record.key.encode()
    key_len = -1 if record.key is None else len(key)
    if len(kind) > 0xFF or len(topic) > 0xFFFF:
        raise ValueError(f"kind {record.kind!r} or topic {record.topic!r} too long to spool")
    headers = b"".join(_encode_header(name, value) for name, value in record.headers)
    payload = b"".join(
        (
            _HEAD.pack(record.appended_at, len(kind), len(topic), key_len, len(headers)),
            kind,
            topic,
            key,
            headers,
            record.value,
        )
    )
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_FRAME_BYTES} to spool")
    word = (VERSION << 28 | len(payload)).to_bytes(4, "little")
    return word + zlib.crc32(payload, zlib.crc32(word)).to_bytes(4, "little") + payload


def encode_v0(record: SpooledRecord) -> bytes:
    """The frame the previous release (5a176a7) wrote: no version, no headers.

    Only to test that such spools are still recovered; the service never writes it.
    """
    kind, topic = record.kind.encode(), record.topic.encode()
    key = b"" if record.key is None else record.key.encode()
    key_len = -1 if record.key is None else len(key)
    payload = _HEAD_V0.pack(record.appended_at, len(kind), len(topic), key_len)
    payload += kind + topic + key + record.value
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _encode_header(name: str, value: bytes) -> bytes:
    raw = name.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"header name {name[:40]!r}... too long to spool")
    return _HEADER.pack(len(raw), len(value)) + raw + value


def frame_length(word: int) -> int:
    """The payload length in a frame's first word (without its version bits)."""
    return word & _LENGTH_MASK


def decode_payload(payload: bytes, version: int = VERSION) -> SpooledRecord:
    """The record inside one CRC-checked payload of frame `version`.

    Raises:
        ValueError: the payload's inner lengths do not add up, or an unknown version.
    """
    if version == 0:
        return _decode_v0(payload)
    if version != VERSION:
        raise ValueError(f"spool frame version {version} is not known to this release")
    if len(payload) < _HEAD.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than its header")
    appended_at, kind_len, topic_len, key_len, headers_len = _HEAD.unpack_from(payload)
    kind, topic, key, pos = _names(payload, _HEAD.size, kind_len, topic_len, key_len)
    end = pos + headers_len
    if end > len(payload) or key_len < -1:
        raise ValueError("payload lengths exceed the payload")
    headers: list[tuple[str, bytes]] = []
    while pos < end:
        if pos + _HEADER.size > end:
            raise ValueError("a header's lengths exceed the headers")
        name_len, value_len = _HEADER.unpack_from(payload, pos)
        pos += _HEADER.size
        name = payload[pos : pos + name_len].decode()
        pos += name_len
        headers.append((name, payload[pos : pos + value_len]))
        pos += value_len
    if pos != end:
        raise ValueError("a header's lengths exceed the headers")
    return SpooledRecord(topic, key, kind, payload[end:], appended_at, tuple(headers))


def _decode_v0(payload: bytes) -> SpooledRecord:
    if len(payload) < _HEAD_V0.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than its header")
    appended_at, kind_len, topic_len, key_len = _HEAD_V0.unpack_from(payload)
    kind, topic, key, pos = _names(payload, _HEAD_V0.size, kind_len, topic_len, key_len)
    if pos > len(payload) or key_len < -1:
        raise ValueError("payload lengths exceed the payload")
    return SpooledRecord(topic, key, kind, payload[pos:], appended_at)


def _names(
    payload: bytes, pos: int, kind_len: int, topic_len: int, key_len: int
) -> tuple[str, str, str | None, int]:
    """Kind, topic and key (None when `key_len` is -1) from `pos`, and where they end."""
    kind = payload[pos : pos + kind_len].decode()
    pos += kind_len
    topic = payload[pos : pos + topic_len].decode()
    pos += topic_len
    key: str | None = None
    if key_len >= 0:
        key = payload[pos : pos + key_len].decode()
        pos += key_len
    return kind, topic, key, pos


def scan(buf: bytes, start: int = 0, limit: int | None = None) -> Scan:
    """Decode the frames of `buf` from `start` until its end or the first bad frame.

    Args:
        buf: segment bytes.
        start: offset of the first frame to read.
        limit: stop after this many records (`end` then follows the last of them).

    Returns:
        The intact records and where they end; `problem` says why a tail was left.
    """
    records: list[tuple[int, SpooledRecord]] = []
    pos = start
    while pos < len(buf) and (limit is None or len(records) < limit):
        if len(buf) - pos < _FRAME.size:
            return Scan(records, pos, "torn")
        word, crc = _FRAME.unpack_from(buf, pos)
        version, length = word >> 28, word & _LENGTH_MASK
        head = _HEAD_V0 if version == 0 else _HEAD
        # An unknown version is a damaged word as far as this release can tell.
        if version > VERSION or length < head.size or length > MAX_FRAME_BYTES:
            return Scan(records, pos, "bad_length")
        end = pos + _FRAME.size + length
        if end > len(buf):
            return Scan(records, pos, "torn")
        payload = buf[pos + _FRAME.size : end]
        seed = 0 if version == 0 else zlib.crc32(buf[pos : pos + 4])
        if zlib.crc32(payload, seed) != crc:
            return Scan(records, pos, "crc_mismatch")
        try:
            record = decode_payload(payload, version)
        except (ValueError, UnicodeDecodeError):
            return Scan(records, pos, "bad_payload")
        records.append((end, record))
        pos = end
    return Scan(records, pos, None)

"""Turn a request body into records, each with its own original bytes.

A body is one record (a JSON object), a JSON array of records, or a wrapper
object `{"<wrapper>": [...]}`. Every record keeps the exact bytes it had in the
body, so a dead letter can be replayed byte for byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from services.ingest.errors import BatchTooLarge, InvalidBody

_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = (" ", "\t", "\n", "\r")


def _skip_ws(text: str, pos: int) -> int:
    if text[pos : pos + 1] not in _WS_CHARS:  # compact JSON: no regex call per record
        return pos
    m = _WS.match(text, pos)
    return m.end() if m else pos


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and pydantic
    # would turn them into null on the way out. Refuse them at the door.
    raise ValueError(f"{name} is not valid JSON; send a finite number or null")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

# JSON lets `\ud800` (a UTF-16 surrogate escape without its pair) through, but the
# string it makes is not text: it cannot be encoded to UTF-8, so the record could not
# be published (found by fuzzing, issue 9). Only a body holding such an escape is
# checked further.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = (
    "a string holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff without its "
    "pair); it is not text: send valid Unicode"
)


def _has_lone_surrogate(text: str, value: Any) -> bool:
    if not _SURROGATE_ESCAPE.search(text):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):  # deep enough to fail here: refused too
        return True
    return False


@dataclass(frozen=True, slots=True)
class RecordItem:
    """One record to validate.

    Attributes:
        index: position in the request (0 for a single record), or in a consumed batch.
        raw: the record's own bytes, exactly as received.
        record: its parsed JSON value, or `raw` itself when it still needs parsing.
    """

    index: int
    raw: bytes
    record: Any


_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded nesting.

    Raises:
        InvalidBody: naming what is wrong and where.
    """
    # orjson first (about 5x faster; each signals.raw record is parsed here): it takes
    # only strict JSON, where both parsers give the same value, except an integer past
    # 64 bits, which orjson reads as a float: text with 19 digits in a row (one may be
    # such an integer) takes the strict parse, as does whatever orjson refuses (the
    # strict parse says what is wrong). Pinned by test_parse_json_is_the_strict_parse.
    digits = _LONG_DIGITS_BYTES if isinstance(data, bytes) else _LONG_DIGITS
    if digits.search(data) is None:  # type: ignore[arg-type]
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return _parse_strict(data)


def _parse_strict(data: bytes | str) -> Any:
    """parse_json with the standard library, naming what is wrong."""
    text = data if isinstance(data, str) else _utf8(data)
    value = _decode(text)
    if _has_lone_surrogate(text, value):
        raise InvalidBody(_LONE_SURROGATE)
    return value


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody(
            f"body is not UTF-8 ({exc.reason} at byte {exc.start}); send UTF-8 encoded JSON"
        ) from None


def _decode(text: str) -> Any:
    """JSON without the surrogate check."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidBody(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
            "send one JSON object or an array of them"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidBody(f"not acceptable JSON: {str(exc)[:200]}") from None


def split_body(body: bytes, *, wrapper: str, max_records: int) -> list[RecordItem]:
    """Split a request body into records.

    Args:
        body: the request body.
        wrapper: the key of the wrapper object form, e.g. "signals".
        max_records: most records accepted in one body.

    Returns:
        One RecordItem per record, in body order; `record` is the parsed value, or
        the record's bytes when they hold a lone surrogate (validation then rejects
        that record alone as invalid_json).

    Raises:
        InvalidBody: the body is not (strict) JSON.
        BatchTooLarge: the body holds more than `max_records` records.
    """
    compact = _compact_batch(body, wrapper)
    if compact is not None:
        if len(compact) > max_records:
            raise BatchTooLarge(
                f"{len(compact)} records in one request; the limit is {max_records}, split "
                "the batch"
            )
        return compact
    text = _utf8(body)
    spans = _scan_batch(text, wrapper)
    if spans is None:
        return _split_parsed(text, body, wrapper=wrapper, max_records=max_records)
    if len(spans) > max_records:
        raise BatchTooLarge(
            f"{len(spans)} records in one request; the limit is {max_records}, split the batch"
        )
    return _items(text, spans)


def _compact_batch(body: bytes, wrapper: str) -> list[RecordItem] | None:
    """The records of an array or wrapper body written as compact JSON (what most clients
    send), or None for any other body (the scan below then splits it).

    One orjson parse of the whole body and one orjson write of each record, about 1 µs
    a record against 7 for scanning record by record (issue 9). The records' bytes are
    their orjson writes, and they are taken only when the body is exactly those writes
    joined, byte for byte; so each record's bytes are what it had in the body, as the
    scan would cut them. orjson refuses what strict JSON refuses (NaN, invalid UTF-8,
    lone surrogates); anything else it refuses or writes differently (whitespace,
    escapes, a number's spelling, repeated keys) takes the scan.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(value) is list:
        records, head, tail = value, b"[", b"]"
    elif type(value) is dict and len(value) == 1 and type(value.get(wrapper)) is list:
        records, head, tail = value[wrapper], b'{"' + wrapper.encode() + b'":[', b"]}"
    else:
        return None
    try:
        raws = [orjson.dumps(r) for r in records]
    except orjson.JSONEncodeError:
        return None
    if head + b",".join(raws) + tail != body:
        return None
    pairs = enumerate(zip(raws, records, strict=True))
    return [RecordItem(i, raw, record) for i, (raw, record) in pairs]


def _split_parsed(text: str, body: bytes, *, wrapper: str, max_records: int) -> list[RecordItem]:
    """split_body by parsing the whole body first, then each record again: any body,
    and the error messages of a full parse."""
    value = _decode(text)
    start = _skip_ws(text, 0)
    if isinstance(value, list):
        spans = _array_items(text, start, value, max_records)
    elif isinstance(value, dict) and list(value) == [wrapper] and isinstance(value[wrapper], list):
        spans = _array_items(text, _member_start(text, start, wrapper), value[wrapper], max_records)
    else:
        if _has_lone_surrogate(text, value):
            raise InvalidBody(_LONE_SURROGATE)
        return [RecordItem(0, body, value)]
    return _items(text, spans)


def _items(text: str, spans: list[tuple[int, int, Any]]) -> list[RecordItem]:
    if not _SURROGATE_ESCAPE.search(text):
        return [RecordItem(i, text[a:b].encode("utf-8"), v) for i, (a, b, v) in enumerate(spans)]
    items = []
    for i, (a, b, v) in enumerate(spans):
        raw = text[a:b].encode("utf-8")
        items.append(RecordItem(i, raw, raw if _has_lone_surrogate(text[a:b], v) else v))
    return items


def _scan_batch(text: str, wrapper: str) -> list[tuple[int, int, Any]] | None:
    """(start, end, value) of each record of a well-formed array or `{"<wrapper>": [...]}`
    body, parsing each record once; None for any other body, or one that is not
    valid JSON (the full parse then handles it and says what is wrong)."""
    pos = _skip_ws(text, 0)
    closing = ""
    if text.startswith("{", pos):
        # Only the plain spelling of the one key; escapes or more members: full parse.
        head = re.compile(r'\{[ \t\n\r]*"' + re.escape(wrapper) + r'"[ \t\n\r]*:[ \t\n\r]*')
        m = head.match(text, pos)
        if m is None:
            return None
        pos, closing = m.end(), "}"
    if not text.startswith("[", pos):
        return None
    spans: list[tuple[int, int, Any]] = []
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                item, end = _DECODER.raw_decode(text, pos)
            except (ValueError, RecursionError):
                return None
            spans.append((pos, end, item))
            pos = _skip_ws(text, end)
            sep, pos = text[pos : pos + 1], pos + 1
            if sep == "]":
                break
            if sep != ",":
                return None
            pos = _skip_ws(text, pos)
    if closing:
        pos = _skip_ws(text, pos)
        if not text.startswith(closing, pos):
            return None
        pos += 1
    return spans if _skip_ws(text, pos) == len(text) else None


def _array_items(
    text: str, pos: int, parsed: list[Any], max_records: int
) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each element of the array that opens at `pos`."""
    if len(parsed) > max_records:
        raise BatchTooLarge(
            f"{len(parsed)} records in one request; the limit is {max_records}, split the batch"
        )
    spans: list[tuple[int, int, Any]] = []
    pos = _skip_ws(text, pos + 1)
    while len(spans) < len(parsed):
        item, end = _DECODER.raw_decode(text, pos)
        spans.append((pos, end, item))
        pos = _skip_ws(text, end)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return spans


def _member_start(text: str, pos: int, key: str) -> int:
    """Position of the value of the last `key` member of the object that opens at `pos`.

    The object is known to be valid JSON; the last occurrence wins, as in json.loads.
    """
    found = -1
    pos = _skip_ws(text, pos + 1)
    while text[pos] != "}":
        name, pos = _DECODER.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        pos = _skip_ws(text, pos + 1)  # past ":"
        if name == key:
            found = pos
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return found

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

from services.ingest.errors import BatchTooLarge, InvalidBody

_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int) -> int:
    m = _WS.match(text, pos)
    return m.end() if m else pos


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and pydantic
    # would turn them into null on the way out. Refuse them at the door.
    raise ValueError(f"{name} is not valid JSON; send a finite number or null")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


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


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded nesting.

    Raises:
        InvalidBody: naming what is wrong and where.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise InvalidBody(
            f"body is not UTF-8 ({exc.reason} at byte {exc.start}); send UTF-8 encoded JSON"
        ) from None
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
        One RecordItem per record, in body order; `record` is the parsed value.

    Raises:
        InvalidBody: the body is not (strict) JSON.
        BatchTooLarge: the body holds more than `max_records` records.
    """
    value = parse_json(body)
    text = body.decode("utf-8")
    start = _skip_ws(text, 0)
    if isinstance(value, list):
        spans = _array_items(text, start, value, max_records)
    elif isinstance(value, dict) and list(value) == [wrapper] and isinstance(value[wrapper], list):
        spans = _array_items(text, _member_start(text, start, wrapper), value[wrapper], max_records)
    else:
        return [RecordItem(0, body, value)]
    return [RecordItem(i, text[a:b].encode("utf-8"), v) for i, (a, b, v) in enumerate(spans)]


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

"""How rejection details show values: JSON type names, short reprs, ISO times."""

from __future__ import annotations

from typing import Any

from libs.common.schemas.base import iso_utc

JSON_TYPE = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return JSON_TYPE.get(type(value), type(value).__name__)


def show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A time as every message writes it (UTC, "Z"); the same function, not a wrapper: it
# runs once per record in the content id.
iso = iso_utc

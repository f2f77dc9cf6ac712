"""Field values against a source's versioned field schema: type, bounds, allowed values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from libs.common.definitions import FieldSpec, FieldType, SourceDefinition
from libs.common.errors import RecordInvalid
from services.ingest.core._describe import json_type, show
from services.ingest.core.reasons import (
    MISSING_FIELD,
    NOT_ALLOWED,
    OUT_OF_RANGE,
    UNKNOWN_FIELD,
    WRONG_TYPE,
)

_INT64 = 2**63

EXPECTED = {
    FieldType.int: "an integer",
    FieldType.float: "a number",
    FieldType.bool: "true or false",
    FieldType.str: "a string",
}


def check_fields(fields: Mapping[str, Any], source: SourceDefinition) -> None:
    """Check field values against the source's field schema.

    A null value counts as absent: allowed for optional fields, missing for required ones.

    Raises:
        RecordInvalid: unknown_field, missing_field, wrong_type, out_of_range, not_allowed.
    """
    unknown = sorted(set(fields) - set(source.fields))
    if unknown:
        raise RecordInvalid(
            UNKNOWN_FIELD,
            detail=f"field {_names(unknown)} not in source {source.name!r} version "
            f"{source.version} (known: {', '.join(sorted(source.fields))}); remove it, or add "
            "it to the source in the definitions file with a new version",
        )
    for name, spec in source.fields.items():
        value = fields.get(name)
        if value is None:
            if spec.required:
                state = "null" if name in fields else "missing"
                raise RecordInvalid(
                    MISSING_FIELD,
                    detail=f"required field {name!r} of source {source.name!r} is {state}; "
                    f"send {EXPECTED[spec.type]}",
                )
            continue
        check_value(name, value, spec)


def check_value(name: str, value: Any, spec: FieldSpec) -> None:
    """Check one non-null value against its field spec (type, bounds, allowed values).

    Raises:
        RecordInvalid: wrong_type, out_of_range or not_allowed.
    """
    if not _has_type(value, spec.type):
        raise RecordInvalid(
            WRONG_TYPE,
            detail=f"field {name!r} is {json_type(value)} ({show(value)}); send "
            f"{EXPECTED[spec.type]}",
        )
    if spec.type in (FieldType.int, FieldType.float):
        _check_number(name, value, spec)
    if spec.type == FieldType.str and spec.allowed is not None and value not in spec.allowed:
        raise RecordInvalid(
            NOT_ALLOWED,
            detail=f"field {name!r} is {show(value)}; send one of "
            f"{', '.join(repr(a) for a in spec.allowed)}",
        )


def _has_type(value: Any, expected: FieldType) -> bool:
    kind = type(value)
    if expected == FieldType.int:
        return kind is int
    if expected == FieldType.float:
        return kind in (int, float)
    if expected == FieldType.bool:
        return kind is bool
    return kind is str


def _check_number(name: str, value: int | float, spec: FieldSpec) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordInvalid(OUT_OF_RANGE, detail=f"field {name!r} is {value}; send a finite number")
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise RecordInvalid(
            OUT_OF_RANGE,
            detail=f"field {name!r} is {show(value)}; send an integer within 64 bits",
        )
    if spec.min is not None and value < spec.min:
        raise RecordInvalid(
            OUT_OF_RANGE,
            detail=f"field {name!r} is {value}, below its minimum {spec.min:g}; "
            f"send a value in {_bounds(spec)}",
        )
    if spec.max is not None and value > spec.max:
        raise RecordInvalid(
            OUT_OF_RANGE,
            detail=f"field {name!r} is {value}, above its maximum {spec.max:g}; "
            f"send a value in {_bounds(spec)}",
        )


def _bounds(spec: FieldSpec) -> str:
    lo = f"{spec.min:g}" if spec.min is not None else "-inf"
    hi = f"{spec.max:g}" if spec.max is not None else "inf"
    return f"[{lo}, {hi}]"


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")

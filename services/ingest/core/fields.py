"""Field values against a source's versioned field schema: type, bounds, allowed values.

Also where schema drift is met (services/ingest/core/schema_drift.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from libs.common.definitions import FieldSpec, FieldType, SourceDefinition
from libs.common.errors import RecordInvalid
from services.ingest.core._describe import json_type, show
from services.ingest.core.reasons import MISSING_FIELD, NOT_ALLOWED, OUT_OF_RANGE, WRONG_TYPE
from services.ingest.core.schema_drift import (
    MISSING_OPTIONAL,
    MISSING_REQUIRED,
    TYPE_CHANGED,
    TYPE_COERCED,
    UNKNOWN_FIELD,
    DriftTally,
    coerce,
)
from services.ingest.errors import SourceRecordInvalid

_INT64 = 2**63

_PYTHON_TYPE = {
    FieldType.int: int,
    FieldType.float: float,
    FieldType.bool: bool,
    FieldType.str: str,
}

EXPECTED = {
    FieldType.int: "an integer",
    FieldType.float: "a number",
    FieldType.bool: "true or false",
    FieldType.str: "a string",
}


def check_fields(
    fields: Mapping[str, Any], source: SourceDefinition, tally: DriftTally | None = None
) -> Mapping[str, Any]:
    """Check field values against the source's field schema; tally its drift.

    A null value counts as absent: allowed for optional fields, missing for required
    ones. Additive drift passes (services/ingest/core/schema_drift.py): an unknown
    field is dropped from the result, a number of the other JSON number type is
    converted; each is tallied in `tally`, as are the breaking kinds raised here.

    Returns:
        The fields to publish: `fields` itself when nothing was dropped or converted.

    Raises:
        SourceRecordInvalid: missing_field, wrong_type, out_of_range, not_allowed (with
            the field's name).
    """
    specs = source.fields
    src = source.name
    out = fields
    if not fields.keys() <= specs.keys():
        # Additive: the record keeps its declared fields; the rest is reported as drift.
        out = {k: v for k, v in fields.items() if k in specs}
        if tally is not None:
            for name in fields.keys() - specs.keys():
                tally[(src, UNKNOWN_FIELD, name, json_type(fields[name]))] += 1
    for name, spec in specs.items():
        value = fields.get(name)
        if value is None:
            state = "null" if name in fields else "absent"
            if spec.required:
                if tally is not None:
                    tally[(src, MISSING_REQUIRED, name, state)] += 1
                raise SourceRecordInvalid(
                    MISSING_FIELD,
                    detail=f"required field {name!r} of source {src!r} is "
                    f"{'missing' if state == 'absent' else 'null'}; send {EXPECTED[spec.type]}",
                    source=src,
                    field=name,
                )
            if state == "absent" and tally is not None:
                tally[(src, MISSING_OPTIONAL, name, state)] += 1
            continue
        if type(value) is not _PYTHON_TYPE[spec.type]:
            coerced = coerce(value, spec.type)
            if coerced is not value:
                if tally is not None:
                    tally[(src, TYPE_COERCED, name, json_type(value))] += 1
                if out is fields:
                    out = dict(fields)
                out[name] = value = coerced  # type: ignore[index]  # a dict once copied
        try:
            check_value(name, value, spec)
        except RecordInvalid as exc:
            if exc.reason == WRONG_TYPE and tally is not None:
                tally[(src, TYPE_CHANGED, name, json_type(value))] += 1
            raise SourceRecordInvalid(
                exc.reason, detail=exc.detail, source=src, field=name
            ) from None
    return out


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

"""Schema drift: how a record's fields differ from its source's registered schema.

Pure detection. Validation tallies each difference it meets as a `DriftKey` in a
batch's `DriftTally` (a Counter: one dict update per difference, nothing when a
record matches its schema); the handler's drift log (services/ingest/drift_log.py)
keeps first and last sightings, counts them and rate-limits the events.

Additive kinds pass: an unknown field (dropped from the published signal), a
missing optional field, a value of another JSON type that converts without loss
(`coerce`). Breaking kinds are dead-lettered, so they replay once the definitions
declare them: a missing required field, a type that does not convert, a schema
version above the registered one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from libs.common.definitions import FieldType

UNKNOWN_FIELD: Final = "unknown_field"
MISSING_OPTIONAL: Final = "missing_optional"
TYPE_COERCED: Final = "type_coerced"
MISSING_REQUIRED: Final = "missing_required"
TYPE_CHANGED: Final = "type_changed"
NEW_VERSION: Final = "new_version"

KINDS: Final = (
    UNKNOWN_FIELD,
    MISSING_OPTIONAL,
    TYPE_COERCED,
    MISSING_REQUIRED,
    TYPE_CHANGED,
    NEW_VERSION,
)
BREAKING: Final = frozenset({MISSING_REQUIRED, TYPE_CHANGED, NEW_VERSION})
VERSION_FIELD: Final = "schema_version"

# (source, kind, field, observed): `observed` is the JSON type seen ("a string"),
# "absent" or "null" for a missing field, the version number for new_version.
DriftKey = tuple[str, str, str, str]
DriftTally = Counter[DriftKey]

# Floats hold integers exactly up to 2**53; beyond that a conversion would round.
_EXACT = 2**53


def is_breaking(kind: str) -> bool:
    return kind in BREAKING


def coerce(value: Any, expected: FieldType) -> Any:
    """`value` converted without loss to the declared type, or `value` itself.

    The only conversions are between JSON numbers: an integer where a float is
    declared (21 -> 21.0) and an integral float where an int is (3.0 -> 3), within
    2**53. A string is never read as a number: that is a type change.
    """
    kind = type(value)
    if expected == FieldType.float and kind is int and -_EXACT <= value <= _EXACT:
        return float(value)
    if expected == FieldType.int and kind is float and value.is_integer() and abs(value) <= _EXACT:
        return int(value)
    return value

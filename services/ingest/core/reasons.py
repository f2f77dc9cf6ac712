"""Reason codes of rejected records: short and stable; operators filter dead letters by them."""

from __future__ import annotations

INVALID_JSON = "invalid_json"
INVALID_ENVELOPE = "invalid_envelope"
TOO_LARGE = "too_large"
UNKNOWN_SOURCE = "unknown_source"
UNKNOWN_MODEL = "unknown_model"
SCHEMA_VERSION_MISMATCH = "schema_version_mismatch"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
NOT_ALLOWED = "not_allowed"
TOO_LATE = "too_late"
FROM_THE_FUTURE = "from_the_future"

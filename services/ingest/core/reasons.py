"""Reason codes of rejected records: short and stable; operators filter dead letters by them."""

from __future__ import annotations

INVALID_JSON = "invalid_json"
INVALID_ENVELOPE = "invalid_envelope"
TOO_LARGE = "too_large"
UNKNOWN_SOURCE = "unknown_source"
UNKNOWN_MODEL = "unknown_model"
SCHEMA_VERSION_MISMATCH = "schema_version_mismatch"
# A schema version above the registered one: quarantined until the definitions declare it.
SCHEMA_BREAKING = "schema_breaking"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
NOT_ALLOWED = "not_allowed"
TOO_LATE = "too_late"
FROM_THE_FUTURE = "from_the_future"
# Polled sources (services/ingest/sources): a record the source's poll.mapping cannot
# read, and a response holding no list of records at all.
UNMAPPED_RECORD = "unmapped_record"
INVALID_POLL_RESPONSE = "invalid_poll_response"

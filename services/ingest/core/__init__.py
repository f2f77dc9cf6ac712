"""Pure ingest logic: splitting request bodies, validating records, verdicts."""

from services.ingest.core.batch import RecordItem, parse_json, split_body
from services.ingest.core.validation import validate_outcome, validate_signal
from services.ingest.core.verdicts import Accepted, BatchResult, Judged, Rejected, judge

__all__ = [
    "Accepted",
    "BatchResult",
    "Judged",
    "RecordItem",
    "Rejected",
    "judge",
    "parse_json",
    "split_body",
    "validate_outcome",
    "validate_signal",
]

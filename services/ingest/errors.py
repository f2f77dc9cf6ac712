"""Errors of the ingest service: request bodies that cannot be taken in at all.

Single bad records are not errors here; they raise libs.common.errors.RecordInvalid
and end in the dead-letter topic.
"""

from __future__ import annotations

from libs.common.errors import SignalopsError


class IngestError(SignalopsError):
    """Base class of ingest errors."""


class InvalidBody(IngestError):
    """The request body is not JSON (or not UTF-8); it is dead-lettered whole."""

    reason = "invalid_json"


class BatchTooLarge(IngestError):
    """The body holds more records (or bytes) than the service takes in one request.

    Nothing is accepted and nothing is dead-lettered: the client still holds the
    records and is told to split the batch.
    """

    reason = "batch_too_large"

"""Errors of the ingest service: request bodies that cannot be taken in at all.

Single bad records are not errors here; they raise libs.common.errors.RecordInvalid
and end in the dead-letter topic.
"""

from __future__ import annotations

from libs.common.errors import RecordInvalid, SignalopsError


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


class BodyTooSlow(IngestError):
    """The body did not arrive within body_timeout_s (a stalled or slow-drip client).

    Nothing is accepted: the request's slot under max_concurrent_requests is freed
    (408) instead of being held by a client that sends a byte at a time.
    """

    reason = "body_timeout"


class SourceRecordInvalid(RecordInvalid):
    """A signal of a known source rejected for one field or for its time.

    Carries the source (and field) so data-quality and lateness counts need not
    parse the record again.
    """

    def __init__(self, reason: str, *, detail: str, source: str, field: str | None = None) -> None:
        super().__init__(reason, detail=detail)
        self.source = source
        self.field = field


class PollSecretMissing(IngestError):
    """A polled source's auth secret is not where its definition says (env var or file).

    Operator action: set the environment variable or mount the file named in the
    message, then restart ingest.
    """

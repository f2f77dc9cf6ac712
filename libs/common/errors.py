"""Errors shared by all services; each names the offending value and the fix."""

from __future__ import annotations


class SignalopsError(Exception):
    """Base class of every signalops error."""


class DefinitionsError(SignalopsError):
    """The definitions file is missing or invalid.

    Operator action: fix the file named in the message and restart the service.
    """


class RecordInvalid(SignalopsError):
    """A record failed validation; it goes to the dead-letter topic with `reason`.

    Derives from Exception (not BaseException) so asyncio cancellation stays safe.
    """

    def __init__(self, reason: str, *, detail: str = "", errors: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.errors = errors or []  # each problem found, when the validator saw several


class ModelNotFound(SignalopsError):
    """No registered model version answers the request.

    Operator action: run `signalops retrain --model NAME` or check the registry.
    """


class DependencyUnavailable(SignalopsError):
    """Another system (Kafka, Redis, MLflow, the offline store) did not answer in time,
    or its circuit breaker is open. Transient: callers retry, degrade or redeliver.
    """

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} unavailable: {detail}" if detail else dependency)
        self.dependency = dependency
        self.detail = detail


class RollbackUnavailable(SignalopsError):
    """A rollback was asked for a model that has no previous champion.

    Operator action: promote a version explicitly (`signalops models promote`).
    """

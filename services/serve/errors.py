"""Errors of the serve service; each maps to one HTTP status in app.py."""

from __future__ import annotations

from libs.common.errors import SignalopsError


class ServeError(SignalopsError):
    """Base class of serve errors; `code` is the machine-readable error name."""

    code = "serve_error"


class UnknownModel(ServeError):
    """The request names a model the definitions file does not declare."""

    code = "unknown_model"


class InvalidFeatures(ServeError):
    """Supplied features name references the model does not use."""

    code = "invalid_features"


class BadPriority(ServeError):
    """The X-Priority header holds something other than high, normal or low."""

    code = "bad_priority"


class BadDeadline(ServeError):
    """The X-Deadline-Ms header is not a whole number of milliseconds in range."""

    code = "bad_deadline"


class Overloaded(ServeError):
    """The replica sheds this priority class now (503); the client retries after a pause."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Overloaded):
    """The request's deadline passed before its work began; answered 503 without it."""

    code = "deadline_exceeded"


class InvalidTraffic(ServeError):
    """A traffic setting is out of range (challenger fraction outside 0..1)."""

    code = "invalid_traffic"


class BatchTooLarge(ServeError):
    code = "batch_too_large"


class UnknownView(ServeError):
    """A features read names a feature view the definitions file does not declare."""

    code = "unknown_view"


class FeaturesNotFound(ServeError):
    """No requested view holds a vector for the entity: a cold start, or it expired."""

    code = "features_not_found"


class Unauthorized(ServeError):
    """No bearer token was presented for an admin action."""

    code = "unauthorized"


class Forbidden(ServeError):
    """The bearer token does not carry the admin scope."""

    code = "forbidden"


class FeatureStoreUnavailable(ServeError):
    """The online store did not answer in time, or its circuit breaker is open.

    Predictions never show it (the fallback answers instead); feature reads
    (`/v1/features`) answer 503 with Retry-After.
    Operator action: check Redis (`signalops status`).
    """

    code = "feature_store_unavailable"


class ModelMismatch(ServeError):
    """A registered booster's inputs differ from the model's features in the definitions.

    The replica keeps serving what it had. Operator action: retrain the model with
    the current definitions file (`signalops retrain --model NAME`).
    """

    code = "model_mismatch"

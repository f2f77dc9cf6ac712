"""Errors of the retrain service; each names the offending value and the fix."""

from __future__ import annotations

from libs.common.errors import SignalopsError


class RetrainError(SignalopsError):
    """Base class of retrain errors."""


class UnknownModel(RetrainError):
    """A request names a model the definitions file does not declare.

    Operator action: fix the model name, or add the model to the definitions file.
    """

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(f"unknown model {model!r}; the definitions declare {sorted(known)}")
        self.model = model


class NoTrainingData(RetrainError):
    """There are no labelled rows to train on yet.

    Operator action: wait for outcomes to arrive (topic `outcomes`), or check that
    the features service writes signals to the offline store.
    """

"""What one training run produced (pure data, no Ray or MLflow imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common.schemas import ModelChanged
from services.retrain.core import events
from services.retrain.core.promotion import PromotionDecision


@dataclass(frozen=True)
class TrainingResult:
    """What one training run produced: a registered version and the promotion verdict.

    Attributes:
        model: model name.
        version: the registered version.
        reason: why the run happened (request reason, drift, "bootstrap").
        metrics: holdout metrics (auc, log_loss, rows, train_rows, holdout_rows, ...).
        decision: the promotion decision with its reasons.
        previous_champion: the champion before this run, if any.
        timings: seconds per stage (join, train, register, total).
    """

    model: str
    version: str
    reason: str
    metrics: dict[str, float]
    decision: PromotionDecision
    previous_champion: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision.promote

    def events(self) -> list[ModelChanged]:
        """The ModelChanged facts to publish: registered, then promoted if it was."""
        out = [events.registered(self.model, self.version, self.metrics, self.reason)]
        if self.promoted:
            out.append(events.promoted(self.model, self.version, self.metrics, self.reason))
        return out

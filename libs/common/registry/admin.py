"""Operator actions on the registry that every serve replica must follow.

Promote and rollback move the champion alias, then announce it on the models topic
(ModelChanged), so every replica reloads exactly as after a training run. Shared by
serve's admin endpoints and retrain (a service never imports another service).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from libs.common.errors import SignalopsError
from libs.common.registry.aliases import CHAMPION
from libs.common.registry.mlflow import AliasMove, Registry
from libs.common.resilience import Policy
from libs.common.schemas import Message, ModelChanged

# MLflow's answers for a model or version that does not exist.
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


class EventPublisher(Protocol):
    """The one call needed of a publisher (a KafkaPublisher, a runtime, a test fake)."""

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None: ...


class VersionNotFound(SignalopsError):
    """A promotion names a model version the registry does not hold.

    Operator action: pick a version from `signalops models list`.
    """


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if not math.isnan(float(v))}


def champion_event(
    kind: str, model: str, version: str, metrics: Mapping[str, float], reason: str
) -> ModelChanged:
    """ModelChanged of a champion move: kind "promoted" or "rolled_back"."""
    return ModelChanged.model_validate(
        {
            "kind": kind,
            "model": model,
            "version": version,
            "alias": CHAMPION,
            "metrics": _finite(metrics),
            "reason": reason,
        }
    )


def traffic_event(
    model: str, version: str, *, challenger_fraction: float, shadow: bool, reason: str
) -> ModelChanged:
    """ModelChanged(kind="traffic_changed"): replicas re-read the stored split.

    `version` is the champion's (the split is the model's, not a version's); the new
    split rides in `metrics` for readers of the topic.
    """
    return ModelChanged.model_validate(
        {
            "kind": "traffic_changed",
            "model": model,
            "version": version,
            "alias": None,
            "metrics": {"challenger_fraction": challenger_fraction, "shadow": float(shadow)},
            "reason": reason,
        }
    )


class RegistryAdmin:
    """Promote and roll back through the registry, announcing each move on `topic`.

    Args:
        registry: the shared registry client (its calls block: run in threads here).
        publisher: a started publisher for the models topic.
        topic: the models topic (settings.topics.models).
        policy: timeout and breaker of the registry calls (one attempt: an operator
            retries a refused action; a silent retry could promote twice).
    """

    def __init__(
        self,
        registry: Registry,
        publisher: EventPublisher,
        topic: str,
        *,
        policy: Policy | None = None,
    ) -> None:
        self._registry = registry
        self._publisher = publisher
        self._topic = topic
        self._policy = policy or Policy("mlflow-admin", timeout_s=30.0, attempts=1)

    async def announce(self, event: ModelChanged) -> None:
        """Publish one ModelChanged on the models topic, keyed by model name."""
        await self._publisher.publish(self._topic, event, key=event.model)

    async def promote(self, model: str, version: str, *, reason: str) -> AliasMove:
        """Make `version` the champion of `model`; publish kind="promoted".

        The former champion becomes `previous_champion`, so `rollback` can undo it.

        Raises:
            VersionNotFound: the registry has no such model version.
            DependencyUnavailable: the registry or the broker did not answer.
        """
        try:
            move = await self._policy.call_blocking(self._registry.promote, model, version)
        except Exception as exc:
            if getattr(exc, "error_code", None) in _NOT_FOUND:
                raise VersionNotFound(
                    f"model {model!r} has no version {version!r}; see `signalops models list`"
                ) from None
            raise
        await self.announce(champion_event("promoted", model, move.version, move.metrics, reason))
        return move

    async def rollback(self, model: str, *, reason: str) -> AliasMove:
        """Point the champion back at the previous champion; publish kind="rolled_back".

        Raises:
            RollbackUnavailable: no previous champion is recorded.
            DependencyUnavailable: the registry or the broker did not answer.
        """
        move = await self._policy.call_blocking(self._registry.rollback, model)
        await self.announce(
            champion_event("rolled_back", model, move.version, move.metrics, reason)
        )
        return move

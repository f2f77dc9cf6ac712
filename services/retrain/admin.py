"""Operator actions on the registry, for `signalops models list | promote | rollback`.

Promote and rollback move the champion alias and announce it on the models topic,
so serve follows a manual change exactly as it follows a training run.
"""

from __future__ import annotations

from libs.common.clients.kafka import KafkaPublisher, Publisher
from libs.common.registry import AliasMove, MlflowRegistry, Registry, VersionInfo
from libs.common.schemas import ModelChanged
from libs.common.settings import Settings
from services.retrain.core import events


def list_models(
    settings: Settings, models: list[str], *, registry: Registry | None = None
) -> dict[str, list[VersionInfo]]:
    """Versions of each named model, newest first (aliases, metrics, created, tags)."""
    registry = registry or MlflowRegistry.from_settings(settings)
    return {name: registry.list_versions(name) for name in models}


async def announce(
    settings: Settings, event: ModelChanged, *, publisher: Publisher | None = None
) -> None:
    """Publish one ModelChanged on the models topic, keyed by model name.

    With no publisher given, a short-lived Kafka publisher is started and stopped.
    """
    if publisher is not None:
        await publisher.publish(settings.topics.models, event, key=event.model)
        return
    kafka = KafkaPublisher(settings.kafka_bootstrap, client_id="signalops-cli")
    await kafka.start()
    try:
        await kafka.publish(settings.topics.models, event, key=event.model)
    finally:
        await kafka.stop()


async def promote_version(
    settings: Settings,
    model: str,
    version: str,
    *,
    reason: str = "manual promotion",
    registry: Registry | None = None,
    publisher: Publisher | None = None,
) -> AliasMove:
    """Make `version` the champion of `model` and publish ModelChanged(kind="promoted").

    The former champion becomes `previous_champion`, so `rollback_model` can undo it.
    """
    registry = registry or MlflowRegistry.from_settings(settings)
    move = registry.promote(model, version)
    await announce(
        settings, events.promoted(model, move.version, move.metrics, reason), publisher=publisher
    )
    return move


async def rollback_model(
    settings: Settings,
    model: str,
    *,
    reason: str = "manual rollback",
    registry: Registry | None = None,
    publisher: Publisher | None = None,
) -> AliasMove:
    """Point the champion back at the previous champion; publish kind="rolled_back".

    Raises:
        RollbackUnavailable: no previous champion is recorded.
    """
    registry = registry or MlflowRegistry.from_settings(settings)
    move = registry.rollback(model)
    await announce(
        settings, events.rolled_back(model, move.version, move.metrics, reason), publisher=publisher
    )
    return move

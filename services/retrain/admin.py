"""Operator actions on the registry, for `signalops models list | promote | rollback`.

Promote and rollback are libs.common.registry.admin's (serve's admin endpoints run
the same code); here they get a registry and a short-lived publisher from settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libs.common.clients.kafka import KafkaPublisher, Publisher
from libs.common.registry import AliasMove, MlflowRegistry, Registry, VersionInfo
from libs.common.registry.admin import RegistryAdmin
from libs.common.schemas import ModelChanged
from libs.common.settings import Settings


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
    async with _admin(settings, registry, publisher) as admin:
        return await admin.promote(model, version, reason=reason)


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
    async with _admin(settings, registry, publisher) as admin:
        return await admin.rollback(model, reason=reason)


@asynccontextmanager
async def _admin(
    settings: Settings, registry: Registry | None, publisher: Publisher | None
) -> AsyncIterator[RegistryAdmin]:
    """A RegistryAdmin; a Kafka publisher started (and stopped) only when none is given."""
    registry = registry or MlflowRegistry.from_settings(settings)
    if publisher is not None:
        yield RegistryAdmin(registry, publisher, settings.topics.models)
        return
    kafka = KafkaPublisher(settings.kafka_bootstrap, client_id="signalops-cli")
    await kafka.start()
    try:
        yield RegistryAdmin(registry, kafka, settings.topics.models)
    finally:
        await kafka.stop()

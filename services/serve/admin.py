"""Serve's admin API (admin scope): promote, roll back, traffic split, reload, retrain.

Every action is authenticated, traced and logged with the key's name (never the key).
Registry moves and traffic changes are announced on the models topic, so every
replica follows; a retrain request goes to the retrain topic like `signalops retrain`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from pydantic import AwareDatetime, BaseModel, Field

from libs.common.clients.kafka import KafkaPublisher
from libs.common.errors import DependencyUnavailable, RollbackUnavailable
from libs.common.observability.logging import get_logger
from libs.common.observability.tracing import tracer
from libs.common.registry import AliasMove, Registry
from libs.common.registry.admin import RegistryAdmin, VersionNotFound, traffic_event
from libs.common.schemas import Message, RetrainModel
from libs.common.security import KeyRing, Principal
from services.serve.errors import UnknownModel
from services.serve.service import InferenceService

log = get_logger(__name__)

ModelName = Annotated[str, Path(min_length=1, max_length=64, examples=["default"])]


class PromoteBody(BaseModel):
    version: str = Field(min_length=1, max_length=32, examples=["7"])
    reason: str = Field("manual promotion", max_length=2000)


class RollbackBody(BaseModel):
    reason: str = Field("manual rollback", max_length=2000)


class TrafficBody(BaseModel):
    """None leaves a setting as it is."""

    challenger_fraction: float | None = Field(None, ge=0.0, le=1.0, examples=[0.2])
    shadow: bool | None = Field(None, description="Score the challenger, never return it.")
    reason: str = Field("manual traffic change", max_length=2000)


class RetrainBody(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    reason: str = Field("manual", max_length=2000)
    since: AwareDatetime | None = Field(None, description="Train only on rows as of then.")


class AdminPublisher(Protocol):
    """Where admin messages go; stopped with the app."""

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None: ...

    async def stop(self) -> None: ...


class SharedPublisher:
    """One Kafka producer for admin messages, started at first use (most replicas never
    take an admin call) and stopped with the app."""

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._kafka = KafkaPublisher(bootstrap, client_id=client_id)
        self._lock = asyncio.Lock()

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        async with self._lock:
            if not self._kafka.started:
                await self._kafka.start(within_s=10.0)
        await self._kafka.publish(topic, message, key=key)

    async def stop(self) -> None:
        await self._kafka.stop()


def _refused(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def admin_router(
    service: InferenceService,
    keys: KeyRing,
    *,
    registry: Callable[[], Registry],
    publisher: AdminPublisher,
) -> APIRouter:
    """The admin routes over `service`.

    Args:
        service: the replica's service (its catalog follows the moves at once).
        keys: the known API keys; every route needs the admin scope.
        registry: builds the registry client on first use (tests pass a fake).
        publisher: where ModelChanged and RetrainModel messages go.
    """
    settings = service.settings
    made: list[RegistryAdmin] = []

    def registry_admin() -> RegistryAdmin:
        if not made:
            made.append(RegistryAdmin(registry(), publisher, settings.topics.models))
        return made[0]

    def admin_caller(request: Request) -> Principal:
        # A dependency: refused before the body is validated (401/403, not 422).
        return keys.authenticate(request.headers, "admin")

    # A default, not an Annotated alias: annotations are strings here (PEP 563), and
    # FastAPI resolves them in the module's namespace, where a local alias is unknown.
    admin = Depends(admin_caller)

    def known(name: str) -> str:
        if name not in {m.name for m in service.definitions.models}:
            known_names = [m.name for m in service.definitions.models]
            raise UnknownModel(f"model {name[:64]!r} is not defined; known: {known_names}")
        return name

    def audit(action: str, who: Principal, **fields: Any) -> None:
        log.info("admin_action", action=action, key=who.name, **fields)

    def span(action: str, who: Principal, **attributes: Any) -> Any:
        return tracer().start_as_current_span(
            f"serve.admin_{action}",
            kind=SpanKind.SERVER,
            attributes={"admin.key": who.name, **{k: str(v) for k, v in attributes.items()}},
        )

    async def moved(action: str, who: Principal, name: str, move: AliasMove) -> dict[str, Any]:
        await service.catalog.refresh(name)  # this replica at once; the others by event
        audit(action, who, model=name, version=move.version, previous=move.previous)
        return {
            "model": name,
            "version": move.version,
            "previous": move.previous,
            **service.catalog.view().model_dump(),
        }

    router = APIRouter(prefix="/v1/admin")

    @router.post("/models/{name}/promote")
    async def promote(name: ModelName, body: PromoteBody, who: Principal = admin) -> Any:
        """Make `version` the champion; every replica follows within seconds."""
        with span("promote", who, model=name, version=body.version):
            try:
                move = await registry_admin().promote(known(name), body.version, reason=body.reason)
            except VersionNotFound as exc:
                return _refused(404, "version_not_found", str(exc))
            except DependencyUnavailable as exc:
                return _refused(503, "dependency_unavailable", str(exc))
            return await moved("promote", who, name, move)

    @router.post("/models/{name}/rollback")
    async def rollback(
        name: ModelName, body: RollbackBody | None = None, who: Principal = admin
    ) -> Any:
        """Give the champion alias back to the previous champion."""
        reason = (body or RollbackBody()).reason
        with span("rollback", who, model=name):
            try:
                move = await registry_admin().rollback(known(name), reason=reason)
            except RollbackUnavailable as exc:
                return _refused(409, "rollback_unavailable", str(exc))
            except DependencyUnavailable as exc:
                return _refused(503, "dependency_unavailable", str(exc))
            return await moved("rollback", who, name, move)

    @router.put("/models/{name}/traffic")
    async def traffic(name: ModelName, body: TrafficBody, who: Principal = admin) -> Any:
        """Set the challenger fraction and shadow mode; every replica follows."""
        with span("traffic", who, model=name, fraction=body.challenger_fraction):
            try:
                view = await service.catalog.set_traffic(
                    known(name), challenger_fraction=body.challenger_fraction, shadow=body.shadow
                )
                champion = service.catalog.slot(name).champion
                await publisher.publish(
                    settings.topics.models,
                    traffic_event(
                        name,
                        champion.version if champion is not None else "",
                        challenger_fraction=view.challenger_fraction.get(name, 0.0),
                        shadow=view.shadow.get(name, False),
                        reason=body.reason,
                    ),
                    key=name,
                )
            except DependencyUnavailable as exc:
                return _refused(503, "dependency_unavailable", str(exc))
            audit("traffic", who, model=name, fraction=body.challenger_fraction, shadow=body.shadow)
            return view.model_dump()

    @router.post("/reload")
    async def reload(who: Principal = admin) -> dict[str, Any]:
        """Re-read every model's aliases now (this replica)."""
        with span("reload", who):
            changed = await service.catalog.refresh_all()
        audit("reload", who, changed=changed)
        return {"changed": changed, **service.catalog.view().model_dump()}

    @router.post("/retrain", status_code=202)
    async def retrain(body: RetrainBody, who: Principal = admin) -> Any:
        """Ask the retrain service to train `model` now (retrain.requests)."""
        with span("retrain", who, model=body.model):
            request = RetrainModel(
                model=known(body.model),
                reason=body.reason,
                requested_by=f"api:{who.name}",
                since=body.since,
            )
            try:
                await publisher.publish(settings.topics.retrain, request, key=body.model)
            except DependencyUnavailable as exc:
                return _refused(503, "dependency_unavailable", str(exc))
        audit("retrain", who, model=body.model, request_id=request.event_id)
        return {"request_id": request.event_id, "model": body.model}

    return router

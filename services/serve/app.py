"""The HTTP face of serve: a FastAPI app over InferenceService, and the Serve deployment.

`create_app` needs no Ray (tests drive it with httpx and fakes); `SignalopsServe` is
the thin deployment class that builds the real adapters in its replica.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind
from ray import serve
from ray.serve import metrics

from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import load_definitions
from libs.common.http import JsonBodiesByDefault
from libs.common.observability.logging import configure_logging, get_logger
from libs.common.observability.tracing import configure_tracing, tracer
from libs.common.registry import MlflowRegistry
from libs.common.schemas import new_id
from services.serve.adapters.model_events import KafkaModelEvents
from services.serve.adapters.prediction_log import KafkaPredictionLog
from services.serve.core.priority import parse_priority
from services.serve.errors import (
    BadPriority,
    BatchTooLarge,
    FeaturesNotFound,
    FeatureStoreUnavailable,
    Forbidden,
    InvalidFeatures,
    Overloaded,
    ServeError,
    Unauthorized,
    UnknownModel,
    UnknownView,
)
from services.serve.schemas import (
    BatchPredictRequest,
    EntityFeatures,
    ErrorAnswer,
    FeaturesBatchAnswer,
    FeaturesBatchRequest,
    PredictionAnswer,
    PredictRequest,
)
from services.serve.service import InferenceService
from services.serve.settings import ServeSettings

log = get_logger(__name__)

_STATUS: dict[type[ServeError], int] = {
    UnknownModel: 404,
    FeaturesNotFound: 404,
    UnknownView: 400,
    InvalidFeatures: 400,
    BadPriority: 400,
    Overloaded: 429,
    BatchTooLarge: 413,
    Unauthorized: 401,
    Forbidden: 403,
    FeatureStoreUnavailable: 503,
}


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _json(answer: PredictionAnswer, explain: bool) -> str:
    return answer.model_dump_json(exclude=None if explain else {"contributions"})


# Error answers of the feature reads, for the OpenAPI document.
_FEATURE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "Unknown view (the message names the known)."},
    429: {"model": ErrorAnswer, "description": "Overloaded for this priority; see Retry-After."},
    503: {"model": ErrorAnswer, "description": "Online store unavailable; see Retry-After."},
}


def _check_admin(authorization: str | None, token: str) -> None:
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("admin actions need the header 'Authorization: Bearer <admin token>'")
    presented = value.strip().encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(presented, token.encode()):
        raise Forbidden("the bearer token does not carry the admin scope")


def create_app(service: InferenceService, *, manage_lifecycle: bool = False) -> FastAPI:
    """The prediction API (DESIGN.md "HTTP, Ray Serve") over `service`.

    Args:
        service: answers predictions and holds the models.
        manage_lifecycle: start and stop the service with the app's lifespan (the
            deployment does; tests that drive the app directly start it themselves).
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await service.stop()

    app = FastAPI(title="signalops serve", version="1", lifespan=lifespan)
    app.add_middleware(JsonBodiesByDefault)
    admin_token = service.settings.admin_token.get_secret_value()
    # Exported by Ray's metrics agent (as ray_signalops_feature_reads_total), which
    # Prometheus scrapes for Serve; the same outcomes show in /healthz "counts".
    feature_reads = metrics.Counter(
        "signalops_feature_reads",
        description="Online feature reads answered by serve, by endpoint and outcome",
        tag_keys=("endpoint", "outcome"),  # type: ignore[arg-type]  # Ray hints Tuple[str]
    )

    def _count_read(endpoint: str, outcome: str) -> None:
        service.counts[f"features_{outcome}"] += 1
        feature_reads.inc(tags={"endpoint": endpoint, "outcome": outcome})

    @app.exception_handler(ServeError)
    async def _serve_error(_request: Request, exc: ServeError) -> JSONResponse:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
        response = _error(status, exc.code, str(exc))
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, FeatureStoreUnavailable):
            # An open breaker fails every read until its reset; else retry soon.
            open_breaker = service.reader.state == "open"
            wait_s = math.ceil(service.settings.breaker_reset_s) if open_breaker else 0
            response.headers["Retry-After"] = str(max(wait_s, service.settings.retry_after_s))
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()[:20]
        ]
        message = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return _error(422, "invalid_request", message or "invalid request", detail=errors)

    @contextmanager
    def _admitted(
        request: Request, name: str, x_priority: str | None, attributes: dict[str, Any]
    ) -> Iterator[Span]:
        """One server span (continuing the caller's trace) around a priority slot."""
        priority = parse_priority(x_priority)
        with (
            tracer().start_as_current_span(
                name,
                context=extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={**attributes, "priority": priority.value},
            ) as span,
            service.limiter.admit(priority),
        ):
            yield span

    @app.post("/v1/predict")
    async def predict(
        body: PredictRequest,
        request: Request,
        explain: bool = Query(False, description="Add per-feature contributions."),
        x_priority: str | None = Header(None, description="high, normal (default) or low"),
    ) -> Response:
        attributes = {"entity_id": body.entity_id}
        with _admitted(request, "serve.predict", x_priority, attributes) as span:
            (answer,) = await service.predict([body], explain=explain)
            span.set_attribute("model.version", answer.model.version)
            span.set_attribute("model.variant", answer.model.variant)
        return Response(_json(answer, explain), media_type="application/json")

    @app.post("/v1/predict/batch")
    async def predict_batch(
        body: BatchPredictRequest,
        request: Request,
        explain: bool = Query(False, description="Add per-feature contributions."),
        x_priority: str | None = Header(None, description="high, normal (default) or low"),
    ) -> Response:
        attributes = {"batch.size": len(body.requests)}
        with _admitted(request, "serve.predict_batch", x_priority, attributes):
            answers = await service.predict(body.requests, explain=explain)
        content = '{"predictions":[' + ",".join(_json(a, explain) for a in answers) + "]}"
        return Response(content, media_type="application/json")

    async def _read_features(
        request: Request,
        endpoint: str,
        entity_ids: list[str],
        views: list[str] | None,
        x_priority: str | None,
    ) -> list[EntityFeatures]:
        """One counted, traced, admitted read of the online store."""
        attributes = {"features.entities": len(entity_ids), "features.views": str(views or "all")}
        try:
            with _admitted(request, f"serve.features_{endpoint}", x_priority, attributes):
                return await service.features(entity_ids, views)
        except Exception as exc:
            _count_read(endpoint, getattr(exc, "code", "error"))
            raise

    @app.post(
        "/v1/features/batch",
        response_model=FeaturesBatchAnswer,
        responses={
            **_FEATURE_ERRORS,
            413: {"model": ErrorAnswer, "description": "More entities than the limit."},
        },
    )
    async def features_batch(
        body: FeaturesBatchRequest,
        request: Request,
        view: list[str] | None = Query(None, description="Read only these views (repeatable)."),
        x_priority: str | None = Header(None, description="high, normal (default) or low"),
    ) -> Response:
        """Stored feature vectors of many entities, in request order, each with `found`."""
        answers = await _read_features(request, "batch", body.entity_ids, view, x_priority)
        _count_read("batch", "ok")
        content = FeaturesBatchAnswer(entities=answers).model_dump_json()
        return Response(content, media_type="application/json")

    @app.get(
        "/v1/features/{entity_id:path}",
        response_model=EntityFeatures,
        responses={
            **_FEATURE_ERRORS,
            404: {"model": ErrorAnswer, "description": "No view holds a vector."},
        },
    )
    async def features(
        request: Request,
        entity_id: str = Path(min_length=1, max_length=256, examples=["device-42"]),
        view: list[str] | None = Query(None, description="Read only these views (repeatable)."),
        x_priority: str | None = Header(None, description="high, normal (default) or low"),
    ) -> Response:
        """The stored feature vectors of one entity, per view, with freshness and age."""
        (answer,) = await _read_features(request, "one", [entity_id], view, x_priority)
        if not answer.found:
            _count_read("one", "not_found")
            raise FeaturesNotFound(
                f"no feature vector for entity {entity_id[:80]!r} in views "
                f"{answer.missing_views} (cold start, or its vectors expired)"
            )
        _count_read("one", "found")
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.catalog.view().model_dump()

    @app.post("/v1/admin/reload")
    async def reload(authorization: str | None = Header(None)) -> dict[str, Any]:
        _check_admin(authorization, admin_token)
        with tracer().start_as_current_span("serve.admin_reload"):
            changed = await service.catalog.refresh_all()
        log.info("admin_reload", changed=changed)
        return {"changed": changed, **service.catalog.view().model_dump()}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        health = service.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, detail = await service.readiness()
        return JSONResponse(detail, status_code=200 if ready else 503)

    return app


def build_service(settings: ServeSettings, *, replica: str | None = None) -> InferenceService:
    """The service with its real adapters: Redis, MLflow, Kafka (nothing connects yet)."""
    replica = replica or new_id()[:8]
    return InferenceService(
        settings,
        load_definitions(settings.definitions),
        store=RedisFeatureStore(make_redis(settings.redis_url, settings.call_timeout_s)),
        models=MlflowRegistry.from_settings(settings),
        prediction_log=KafkaPredictionLog(
            settings,
            client_id=f"serve-{replica}",
            max_pending=settings.prediction_log_max_pending,
            timeout_s=settings.call_timeout_s * 5,
        ),
        events=KafkaModelEvents(settings, client_id=f"serve-{replica}"),
    )


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (not expected in the deployment)
        return None


@serve.deployment(name="SignalopsServe")
@serve.ingress()
class SignalopsServe:
    """The Serve deployment: builds the service in the replica, serves its FastAPI app.

    Args:
        settings: ServeSettings as a JSON dict (settings_payload), since a replica's
            environment and working directory are not the driver's.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = ServeSettings(**settings)
        configure_logging("serve", self._settings.log_level)
        configure_tracing("serve", self._settings.otlp_endpoint)
        self._service = build_service(self._settings, replica=_replica_id())

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Serve runs the app's lifespan after this: champions load, events are followed.
        return create_app(self._service, manage_lifecycle=True)

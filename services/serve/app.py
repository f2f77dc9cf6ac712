"""The HTTP face of serve: a FastAPI app over InferenceService, and the Serve deployment.

`create_app` needs no Ray (tests drive it with httpx and fakes); `SignalopsServe` is
the thin deployment class that builds the real adapters in its replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind
from ray import serve
from ray.serve import metrics
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import load_definitions
from libs.common.http import BodySizeLimit, JsonBodiesByDefault, security_refusal
from libs.common.observability.logging import configure_logging, get_logger
from libs.common.observability.tracing import configure_tracing, tracer
from libs.common.ratelimit import (
    Limit,
    MemoryRateLimiter,
    RateLimited,
    RateLimiter,
    RedisRateLimiter,
)
from libs.common.registry import MlflowRegistry, Registry
from libs.common.schemas import new_id
from libs.common.security import KeyRing, SecurityError, Unauthenticated, require
from services.serve.adapters.model_events import KafkaModelEvents
from services.serve.adapters.prediction_log import KafkaPredictionLog
from services.serve.admin import AdminPublisher, SharedPublisher, admin_router
from services.serve.bodies import explain_flag, parsed, prediction_openapi
from services.serve.core.priority import Deadline, parse_deadline_ms, parse_priority
from services.serve.errors import (
    BadDeadline,
    BadPriority,
    BatchTooLarge,
    FeaturesNotFound,
    FeatureStoreUnavailable,
    Forbidden,
    InvalidFeatures,
    InvalidTraffic,
    Overloaded,
    ServeError,
    Unauthorized,
    UnknownModel,
    UnknownView,
)
from services.serve.metrics import ServeMetrics
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
    BadDeadline: 400,
    InvalidTraffic: 400,
    Overloaded: 503,  # and DeadlineExceeded; 429 is the per-key rate limit
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
    429: {"model": ErrorAnswer, "description": "The key's rate limit; see Retry-After."},
    503: {
        "model": ErrorAnswer,
        "description": "Online store unavailable, overloaded for this priority, or past the "
        "request's deadline; see Retry-After.",
    },
}


def create_app(
    service: InferenceService,
    *,
    manage_lifecycle: bool = False,
    keys: KeyRing | None = None,
    rate_limiter: RateLimiter | None = None,
    registry: Callable[[], Registry] | None = None,
    publisher: AdminPublisher | None = None,
) -> FastAPI:
    """The prediction API (DESIGN.md "HTTP, Ray Serve") over `service`.

    Args:
        service: answers predictions and holds the models.
        manage_lifecycle: start and stop the service with the app's lifespan (the
            deployment does; tests that drive the app directly start it themselves).
        keys: the API keys; default from the service's settings.
        rate_limiter: per-key limits; the deployment shares them through Redis, the
            default counts in this process only.
        registry: builds the registry client of admin moves (default MLflow from settings).
        publisher: admin messages (model events, retrain requests); default Kafka.
    """
    settings = service.settings
    keys = keys if keys is not None else KeyRing.from_settings(settings)
    limiter = rate_limiter if rate_limiter is not None else MemoryRateLimiter()
    admin_publisher: AdminPublisher = publisher or SharedPublisher(
        settings.kafka_bootstrap, client_id=f"serve-admin-{new_id()[:8]}"
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await service.start()
        try:
            yield
        finally:
            await admin_publisher.stop()
            if isinstance(limiter, RedisRateLimiter):
                await limiter.close()
            if manage_lifecycle:
                await service.stop()

    # FastAPI's own telemetry is off: it opens a second server span (and spans per
    # dependency and serialization) beside serve's own, which cost about half of the
    # replica's healthz throughput (issue 8, docs/benchmarks.md "Serve under wrk load").
    app = FastAPI(
        title="signalops serve",
        version="1",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    serve_tracer = tracer()  # looked up once: per request it cost ~5% of a prediction
    app.add_middleware(JsonBodiesByDefault)
    # Added last, so outermost: an oversized body is refused before anything reads it.
    app.add_middleware(BodySizeLimit, max_bytes=settings.serve_max_body_bytes)
    require_predict_key = settings.predict_key_required
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

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (an unparseable body, an unknown route) in the API's
        # error shape, not {"detail": ...}.
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(SecurityError)
    async def _refused(_request: Request, exc: SecurityError) -> JSONResponse:
        return security_refusal(exc)

    @app.exception_handler(RateLimited)
    async def _limited(_request: Request, exc: RateLimited) -> JSONResponse:
        response = _error(429, exc.code, str(exc))
        response.headers["Retry-After"] = exc.decision.retry_after_header
        return response

    async def _guard(request: Request) -> None:
        """Key and rate limit of a predict or features call (predict scope).

        Without a key the call passes unless keys are required; a presented key is
        always checked, and counted against its limit when it has one.
        """
        who = keys.caller(request.headers)
        if who is None:
            if require_predict_key:
                raise Unauthenticated(
                    "this endpoint needs an API key with the 'predict' scope: send "
                    "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                )
            return
        require(who, "predict")
        if who.rate_per_s is not None:
            limit = Limit.of(who.rate_per_s, who.burst)
            decision = await limiter.acquire(who.name, limit)
            if decision.failed_open:
                service.counts["rate_limit_failed_open"] += 1
            elif not decision.allowed:
                service.counts["rate_limited"] += 1
                raise RateLimited(who.name, limit, decision)

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

    @asynccontextmanager
    async def _admitted(
        request: Request, name: str, x_priority: str | None, attributes: dict[str, Any]
    ) -> AsyncIterator[Span]:
        """One server span (continuing the caller's trace) around a priority slot.

        The request's deadline (X-Deadline-Ms from arrival, else the default) bounds the
        wait for a slot and is left in `request.state.deadline` for the work.
        """
        arrived = service.limiter.clock()
        priority = parse_priority(x_priority)
        budget_ms = parse_deadline_ms(
            request.headers.get("x-deadline-ms"), service.settings.serve_default_deadline_ms
        )
        request.state.deadline = Deadline.after_ms(budget_ms, arrived)
        with serve_tracer.start_as_current_span(
            name,
            context=extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={**attributes, "priority": priority.value, "deadline_ms": budget_ms},
            # A shed answer must stay cheap: formatting its traceback into the span cost
            # 5% of the replica under overload. Sheds are marked by an attribute instead.
            record_exception=False,
        ) as span:
            request.state.priority = priority.value
            try:
                async with service.limiter.admit(priority, request.state.deadline):
                    yield span
            except Overloaded as exc:  # shed while queued, or past the deadline
                service.metrics.shed(priority.value, exc.code)
                span.set_attribute("shed", exc.code)
                raise
            except Exception as exc:  # anything else keeps its traceback in the trace
                span.record_exception(exc)
                raise

    def _observe(
        endpoint: str, request: Request, started: float, answers: list[PredictionAnswer]
    ) -> None:
        service.metrics.answered(
            endpoint,
            request.state.priority,
            (time.perf_counter() - started) * 1000,
            ((a.model.variant, a.degraded, a.reasons) for a in answers),
        )

    # The prediction routes parse their own body (services/serve/bodies.py): FastAPI's
    # parameter solving cost more than the rest of a prediction. The key is checked
    # before the body is read.
    @app.post("/v1/predict", openapi_extra=prediction_openapi(PredictRequest))
    async def predict(request: Request) -> Response:
        await _guard(request)
        body = await parsed(request, PredictRequest)
        explain = explain_flag(request)
        x_priority = request.headers.get("x-priority")
        attributes = {"entity_id": body.entity_id}
        async with _admitted(request, "serve.predict", x_priority, attributes) as span:
            started = time.perf_counter()
            (answer,) = await service.predict(
                [body], explain=explain, deadline=request.state.deadline
            )
            span.set_attribute("model.version", answer.model.version)
            span.set_attribute("model.variant", answer.model.variant)
        _observe("one", request, started, [answer])
        return Response(_json(answer, explain), media_type="application/json")

    @app.post("/v1/predict/batch", openapi_extra=prediction_openapi(BatchPredictRequest))
    async def predict_batch(request: Request) -> Response:
        await _guard(request)
        body = await parsed(request, BatchPredictRequest)
        explain = explain_flag(request)
        x_priority = request.headers.get("x-priority")
        attributes = {"batch.size": len(body.requests)}
        async with _admitted(request, "serve.predict_batch", x_priority, attributes):
            started = time.perf_counter()
            answers = await service.predict(
                body.requests, explain=explain, deadline=request.state.deadline
            )
        _observe("batch", request, started, answers)
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
        await _guard(request)
        attributes = {"features.entities": len(entity_ids), "features.views": str(views or "all")}
        try:
            async with _admitted(request, f"serve.features_{endpoint}", x_priority, attributes):
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

    app.include_router(
        admin_router(
            service,
            keys,
            registry=registry or (lambda: MlflowRegistry.from_settings(settings)),
            publisher=admin_publisher,
        )
    )

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
    serve_metrics = ServeMetrics()
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
            on_count=serve_metrics.prediction_log,
        ),
        events=KafkaModelEvents(settings, client_id=f"serve-{replica}"),
        metrics=serve_metrics,
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
        # Per-key limits shared by every replica through Redis (fails open if it is down).
        limiter = RedisRateLimiter(
            make_redis(self._settings.redis_url, self._settings.rate_limit_timeout_s),
            timeout_s=self._settings.rate_limit_timeout_s,
        )
        return create_app(self._service, manage_lifecycle=True, rate_limiter=limiter)

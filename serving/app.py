"""The HTTP API: an app factory whose ``lifespan`` owns the Redis pool, its routes, and a runner.

Routes: ``GET /v1/customers/{customer_id}/profile``, ``GET /v1/segments``,
``GET /v1/segments/{name}/members`` (:mod:`serving.segments`), ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, ``POST /v1/events`` (:mod:`serving.collect`), plus FastAPI's ``/openapi.json``
and ``/docs``. Every error body is ``{"error": code, "detail": text}`` (see :mod:`serving.errors`).

The Redis client (:func:`get_redis`) and the clock (:func:`get_now_ms`) are dependencies, so
tests can override them through ``app.dependency_overrides``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Final, Protocol, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from features.consent import ConsentDefaults
from features.redis_conn import aclose, aconnect, cluster_url
from features.store import aread_link, aread_stored_profile
from schemas.events import MAX_ID_LEN
from schemas.keys import customer_key, device_key
from serving.auth import KeyRing, guarded, require
from serving.bodies import HealthBody, ProfileBody, ReadyBody, VisitorBody
from serving.collect import CollectSettings, start_collect, stop_collect
from serving.collect import router as collect_router
from serving.cors import RouteCORS
from serving.decision_log import DecisionLog
from serving.deps import AsOfQ, NowDep, RedisDep, parse_as_of
from serving.deps import get_now_ms as get_now_ms  # re-exported: tests override it
from serving.deps import get_redis as get_redis  # re-exported: tests override it
from serving.erasure import install_erasure
from serving.errors import ApiError, error_responses, install_error_handlers
from serving.imports import install_imports
from serving.metrics import CONTENT_TYPE, HttpMetrics, MetricsMiddleware
from serving.nba import close_decisions, install_decisions
from serving.reco_api import install_recommendations
from serving.scoring import ModelSet
from serving.segments import load_definitions, refresh_member_gauge
from serving.segments import router as segments_router

log = logging.getLogger(__name__)

#: Socket connect and read timeout for Redis, in seconds: a dead Redis must fail fast.
REDIS_TIMEOUT: Final = 0.5
#: Retries of a Redis command after a connection error or timeout (so at most 3 attempts).
REDIS_RETRIES: Final = 2
#: Bound of the whole readiness check, below Kubernetes' default 1 s probe timeout.
READY_TIMEOUT: Final = 0.9
#: Most Redis connections per app; a request waits up to :data:`REDIS_TIMEOUT` for a free one.
REDIS_MAX_CONNECTIONS: Final = 64


def _api_version() -> str:
    try:
        return version("nextbest")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def redis_retry() -> Retry:
    """The retry policy of Redis commands: few retries, short exponential backoff."""
    return Retry(ExponentialBackoff(cap=0.05, base=0.005), REDIS_RETRIES)


def create_redis(url: str) -> aioredis.Redis:
    """An async Redis client on its own connection pool (short timeouts, :func:`redis_retry`);
    a Redis Cluster client for a cluster URL (:mod:`features.redis_conn`). Close it with
    :func:`features.redis_conn.aclose`."""
    return aconnect(url, REDIS_MAX_CONNECTIONS, REDIS_TIMEOUT, redis_retry())


def redact_url(url: str) -> str:
    """``url`` without its password, for logs.

    >>> redact_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> redact_url("unix:///tmp/r.sock")
    'unix:///tmp/r.sock'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def get_models(request: Request) -> ModelSet:
    """The loaded models (reloaded in the background as checkpoints are published)."""
    return cast(ModelSet, request.app.state.models)


ModelsDep = Annotated[ModelSet, Depends(get_models)]

router = APIRouter()


@router.get(
    "/v1/customers/{customer_id}/profile",
    response_model=ProfileBody,
    responses=error_responses(401, 403, 404, 422, 503),
    dependencies=[Depends(require("read"))],
    tags=["profiles"],
    summary="A customer's profile as of a time",
)
async def get_profile(
    customer_id: Annotated[
        str, Path(min_length=1, max_length=MAX_ID_LEN, description="The customer id.")
    ],
    redis: RedisDep,
    models: ModelsDep,
    now_ms: NowDep,
    as_of: AsOfQ = None,
) -> dict[str, Any]:
    """The stored profile rendered as of ``as_of`` (one Redis round trip)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    view, bounds, segments = await aread_stored_profile(redis, customer_key(customer_id))
    if view is None:
        raise ApiError(404, "not_found", f"no profile for customer {customer_id!r}")
    return models.document(view, as_of_ms, bounds, segments=segments)


@router.get(
    "/v1/visitors/{anonymous_id}/profile",
    response_model=VisitorBody,
    response_model_exclude_unset=True,
    responses=error_responses(401, 403, 404, 422, 503),
    dependencies=[Depends(require("read"))],
    tags=["profiles"],
    summary="A visitor's profile: the linked customer's, or the anonymous one",
)
async def get_visitor_profile(
    anonymous_id: Annotated[
        str, Path(min_length=1, max_length=MAX_ID_LEN, description="The anonymous (device) id.")
    ],
    redis: RedisDep,
    models: ModelsDep,
    now_ms: NowDep,
    as_of: AsOfQ = None,
) -> dict[str, Any]:
    """The profile of the customer the device is linked to (with the resolved id), or the
    device's anonymous profile when it was never linked."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    linked = await aread_link(redis, anonymous_id)
    key = customer_key(linked) if linked else device_key(anonymous_id)
    view, bounds, segments = await aread_stored_profile(redis, key)
    if view is None:
        raise ApiError(404, "not_found", f"no profile for visitor {anonymous_id!r}")
    return models.document(view, as_of_ms, bounds, resolved_from=anonymous_id, segments=segments)


@router.get(
    "/v1/models",
    tags=["models"],
    summary="The online models and their quality",
    **guarded("read"),
)
async def list_models(models: ModelsDep) -> dict[str, Any]:
    """Each model's loaded version, status, examples seen, label balance, rolling
    progressive-validation metrics (ROC AUC, log loss, Brier score) and their recent history."""
    return {"models": models.describe()}


@router.get("/healthz", response_model=HealthBody, tags=["operations"], summary="Liveness")
async def healthz() -> HealthBody:
    """The process is alive (no dependency is checked)."""
    return HealthBody()


@router.get(
    "/readyz",
    response_model=ReadyBody,
    responses={503: {"model": ReadyBody, "description": "A dependency is not ready"}},
    tags=["operations"],
    summary="Readiness",
)
async def readyz(redis: RedisDep, request: Request) -> ReadyBody | JSONResponse:
    """Ready when Redis answers PING within :data:`READY_TIMEOUT`; otherwise 503 with why.
    ``checks.decisions`` says whether next-best-action answers degraded recently (the reasons
    within the last minute; the API stays ready: it answers with the fallback)."""
    decider = getattr(request.app.state, "decider", None)
    recent = decider.degraded_reasons() if decider is not None else []
    decisions = "degraded: " + ", ".join(recent) if recent else "ok"
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await redis.ping()
    except (RedisError, OSError) as exc:  # OSError includes TimeoutError
        why = str(exc) or f"no answer within {READY_TIMEOUT}s"
        reason = f"{type(exc).__name__}: {why}"[:200]
        body = ReadyBody(status="not_ready", checks={"redis": reason, "decisions": decisions})
        return JSONResponse(body.model_dump(), status_code=503)
    return ReadyBody(status="ready", checks={"redis": "ok", "decisions": decisions})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
    tags=["operations"],
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """The app's metrics in the Prometheus text exposition format (the segment sizes are
    refreshed from Redis at most every few seconds)."""
    client = request.app.state.redis
    if client is not None:
        await refresh_member_gauge(request.app, client)
    registry = cast(HttpMetrics, request.app.state.metrics)
    return Response(registry.render(), media_type=CONTENT_TYPE)


#: How often serving looks for new model checkpoints (seconds).
MODEL_RELOAD_SECONDS = 2.0


async def _reload_models(app: FastAPI, client: aioredis.Redis, stop: asyncio.Event) -> None:
    """Load new model checkpoints as the dataflow publishes them (no restart needed), until
    ``stop`` is set. (A flag, not only a cancellation: redis-py's connection pool can swallow
    a cancellation that lands inside it, and the loop would then go on forever.)"""
    while not stop.is_set():
        try:
            await app.state.models.arefresh(client)
            app.state.metrics.observe_models(app.state.models.describe())
        except (RedisError, OSError) as exc:
            log.warning("model reload: %s", exc)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), MODEL_RELOAD_SECONDS)


class ServingSettings(CollectSettings, Protocol):
    """What the API needs of the settings (:class:`nextbest.settings.Settings` has it): serving
    does not reach up into the application shell."""

    @property
    def redis_url(self) -> str | None: ...
    @property
    def redis_cluster(self) -> bool: ...
    @property
    def log_level(self) -> str: ...
    @property
    def segments(self) -> str | None: ...
    @property
    def actions(self) -> str | None: ...
    @property
    def recommendations(self) -> str | None: ...
    @property
    def cors_origins(self) -> tuple[str, ...]: ...
    @property
    def consent(self) -> ConsentDefaults: ...


def create_app(
    settings: ServingSettings,
    redis_url: str | None = None,
    kafka_brokers: str | None = None,
    *,
    collect_ack_timeout: float | None = None,
    collect_disabled: str | None = None,
    decision_log: DecisionLog | None = None,
    auth: KeyRing | None = None,
) -> FastAPI:
    """Build the app; its lifespan opens (and closes) the Redis pool on ``redis_url``.

    ``kafka_brokers``: where ``POST /v1/events`` writes (the lifespan opens the producer; none:
    the route answers 503 ``collect_disabled``, with ``collect_disabled`` as the detail when
    given); see :mod:`serving.collect`.

    ``redis_url`` defaults to ``settings.redis_url``; the caller resolves an embedded Redis.
    With ``settings.redis_cluster`` it is a Redis Cluster's (any node; see
    :func:`features.redis_conn.cluster_url`).
    The segment definitions (``settings.segments``) are loaded here: a bad file raises
    :class:`features.segments.SegmentConfigError`; so is the action catalogue
    (``settings.actions``, :class:`decisions.catalog.ActionConfigError`). ``decision_log``:
    where served decisions are logged (:mod:`serving.decision_log`; none: not logged); the
    app closes it at the end of its lifespan.
    """
    url = redis_url or settings.redis_url
    if not url:
        raise ValueError("no Redis URL: pass redis_url or set NEXTBEST_REDIS_URL")
    if settings.redis_cluster:
        url = cluster_url(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = create_redis(url)
        app.state.redis = client
        log.info("serving: redis at %s", redact_url(url))
        stop = asyncio.Event()
        reloader = asyncio.create_task(_reload_models(app, client, stop))
        start_collect(app, settings, kafka_brokers, collect_ack_timeout, collect_disabled)
        try:
            yield
        finally:
            await stop_collect(app)
            close_decisions(app)
            stop.set()
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(reloader, 5)
            app.state.redis = None
            await aclose(client)

    app = FastAPIOffline(  # /docs and /redoc from packaged assets: nothing from the internet
        title="nextbest",
        version=_api_version(),
        description="Real-time personalisation engine: customer profiles and operations.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = HttpMetrics()
    app.state.models = ModelSet()
    app.state.segments = load_definitions(settings.segments)
    app.state.redis = None
    app.state.auth = auth
    app.state.openapi_fixes = []  # what only the loaded configuration knows (channel names)
    _finish_openapi(app)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(segments_router)
    app.include_router(collect_router, **guarded("collect"))
    install_decisions(app, settings.actions, decision_log)
    install_recommendations(app, settings.recommendations)
    install_erasure(app)
    install_imports(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(RouteCORS, origins=settings.cors_origins)
    return app


def _finish_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` apply ``app.state.openapi_fixes`` (functions that edit the
    generated document in place) once, when the document is first built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for fix in app.state.openapi_fixes:
                fix(build())
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def run_server(
    settings: ServingSettings,
    redis_url: str,
    host: str,
    port: int,
    kafka_brokers: str | None = None,
    collect_disabled: str | None = None,
    decision_log: DecisionLog | None = None,
    auth: KeyRing | None = None,
) -> None:
    """Serve the API with uvicorn until SIGTERM or SIGINT (blocking).

    Uvicorn handles the signals: it stops accepting, finishes in-flight requests, runs the
    lifespan shutdown, then re-raises the signal (SIGTERM ends the process; SIGINT returns).
    Access logs are on only at ``DEBUG`` (request metrics are in ``/metrics``).
    """
    app = create_app(
        settings,
        redis_url,
        kafka_brokers,
        collect_disabled=collect_disabled,
        decision_log=decision_log,
        auth=auth,
    )
    # What exists now (modules, the app) lives as long as the process: frozen out of the cyclic
    # collector, no full collection walks it again. Before, each one paused the event loop for
    # 80-95 ms under load, past a decision's Redis budget (README "Latency and garbage").
    gc.collect()
    gc.freeze()
    with suppress(KeyboardInterrupt):
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            access_log=settings.log_level == "DEBUG",
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=10,
        )

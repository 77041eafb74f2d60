"""HTTP metrics: a per-app Prometheus registry and a pure ASGI middleware that fills it.

Label values are bounded: ``route`` is the matched route *template* (e.g.
``/v1/customers/{customer_id}/profile``) or ``unmatched``, never the raw path; ``method`` is one
of the standard HTTP methods or ``other``; ``status`` is the numeric status code.

>>> m = HttpMetrics()
>>> m.observe("/healthz", "GET", 200, 0.002)
>>> b'nextbest_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in m.render()
True
"""

from __future__ import annotations

import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets (seconds) suited to a millisecond-scale API.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
#: Buckets (seconds) of the broker acknowledgement time of ``POST /v1/events``.
ACK_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: ``route`` label of requests that matched no route.
UNMATCHED: Final = "unmatched"
#: Content type of what :func:`generate_latest` writes (the classic text format, 0.0.4).
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """The HTTP metrics of one app, in their own :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "nextbest_http_requests_total",
            "HTTP requests served, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "nextbest_http_request_duration_seconds",
            "HTTP request latency in seconds, by route template and method.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.auth_failures = Counter(
            "nextbest_http_auth_failures_total",
            "Requests refused by API-key checks, by reason (missing, unknown: 401; scope: 403).",
            ("reason",),
            registry=self.registry,
        )

        self.model_metric = Gauge(
            "nextbest_model_metric",
            "Rolling progressive-validation metrics of the loaded model checkpoints.",
            ("model", "metric"),
            registry=self.registry,
        )
        self.model_version = Gauge(
            "nextbest_model_version",
            "Version of the loaded checkpoint (0: none, scoring with the prior).",
            ("model",),
            registry=self.registry,
        )

        self.segment_members = Gauge(
            "nextbest_segment_members",
            "Current members of each configured segment (ZCARD of its index, refreshed at most "
            "every few seconds).",
            ("segment",),
            registry=self.registry,
        )

        # POST /v1/events (serving.collect): label values are bounded sets (event types plus
        # ``unknown``, schemas.events.REASONS, request outcomes), never ids.
        self.collect_events = Counter(
            "nextbest_collect_events_total",
            "Events received by POST /v1/events, by status (accepted, rejected) and event type "
            "(unknown: not a known type).",
            ("status", "type"),
            registry=self.registry,
        )
        self.collect_rejected = Counter(
            "nextbest_collect_rejected_total",
            "Events rejected by POST /v1/events, by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.collect_ack = Histogram(
            "nextbest_collect_ack_seconds",
            "Time from producing a request's records to the broker's last acknowledgement.",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.collect_requests = Counter(
            "nextbest_collect_requests_total",
            "POST /v1/events requests by outcome (accepted, partial, all_rejected, invalid_json, "
            "too_large, empty_batch, broker_unavailable, collect_disabled).",
            ("outcome",),
            registry=self.registry,
        )

    def observe_models(self, rows: list[dict[str, Any]]) -> None:
        """Export the loaded models' version and metrics (label values: the model names)."""
        for row in rows:
            self.model_version.labels(row["model"]).set(row["version"] or 0)
            for name, value in row["metrics"].items():
                if value is not None:
                    self.model_metric.labels(row["model"], name).set(value)
            self.model_metric.labels(row["model"], "examples_seen").set(row["examples_seen"])

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        method = method if method in _METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of the registry."""
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The template of the route the router matched in ``scope``, or :data:`UNMATCHED`."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware recording :class:`HttpMetrics` for every HTTP request.

    The router stores the matched route in the (shared) scope, so the template is read after the
    app has run; an exception escaping the app before a response started counts as a 500.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, timing it and capturing the response status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before starting a response
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(
                route_template(scope),
                str(scope.get("method", "")),
                status,
                time.perf_counter() - start,
            )

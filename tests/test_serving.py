"""End-to-end HTTP tests of the serving app against a real Redis (started by ``conftest.py``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from features.document import profile_document
from features.profile import ProfileState, ingest, new_state, view
from features.store import link_key, write_states
from nextbest.settings import Settings
from schemas.events import Event
from serving.app import create_app, create_redis, get_now_ms, get_redis

REPO = Path(__file__).resolve().parent.parent
SETTINGS = Settings.from_env({})
T0 = 1_767_323_045_000  # 2026-01-02T03:04:05Z
PROFILE_ROUTE = "/v1/customers/{customer_id}/profile"


def _store_customer(client: redis.Redis, customer_id: str) -> ProfileState:
    """Apply a small history of real events for one customer and write its profile."""
    events = [
        Event(event_id="e1", type="page_view", ts=T0, customer_id=customer_id),
        Event(event_id="e2", type="product_view", ts=T0 + 1_000, customer_id=customer_id),
        Event(event_id="e3", type="page_view", ts=T0 + 2_000, customer_id=customer_id),
        Event(
            event_id="e4",
            type="purchase",
            ts=T0 + 60_000,
            customer_id=customer_id,
            order_id="o1",
            total=20.5,
        ),
        Event(event_id="e5", type="refund", ts=T0 + 120_000, customer_id=customer_id, total=5.0),
    ]
    state = new_state("c:" + customer_id)
    for ev in events:
        assert ingest(state, ev, 600_000) == "applied"
    assert write_states(client, [state]) == 1
    return state


@pytest.fixture
def api(redis_url: str, redis_client: redis.Redis) -> Iterator[TestClient]:
    """A test client on an app backed by the session Redis (flushed), lifespan running."""
    with TestClient(create_app(SETTINGS, redis_url)) as client:
        yield client


@pytest.fixture
def dead_api(tmp_path: Path) -> Iterator[TestClient]:
    """A test client on an app whose Redis is a unix socket that does not exist."""
    with TestClient(create_app(SETTINGS, f"unix://{tmp_path}/missing.sock")) as client:
        yield client


def test_profile_returns_rendered_state(api: TestClient, redis_client: redis.Redis) -> None:
    state = _store_customer(redis_client, "42")
    resp = api.get("/v1/customers/42/profile", params={"as_of": "2026-01-03T00:00:00Z"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    scores = body.pop("scores")
    assert body.pop("segments") == {}  # in no segment (none stored)
    assert body == profile_document(view(state), T0 + 75_355_000, None)
    assert {scores[t]["source"] for t in ("churn", "propensity")} == {"prior"}  # no checkpoint yet
    assert scores["p_alive"]["source"] == "none"  # no buy-till-you-die fit published
    expected = {
        "customer_id": "42",
        "kind": "customer",
        "as_of": "2026-01-03T00:00:00Z",
        "first_seen_ts": "2026-01-02T03:04:05Z",
        "last_seen_ts": "2026-01-02T03:06:05Z",
        "events_total": 5,
        "purchases_total": 1,
        "revenue_total": 15.5,
        "page_views_24h": 2,
        "page_views_1h": 0,
        "purchases_7d": 1,
        "revenue_7d": 15.5,
        "rfm_segment": "unscored",
        "counts": {"page_view": 2, "product_view": 1, "purchase": 1, "refund": 1},
    }
    assert {k: body[k] for k in expected} == expected


def test_visitor_profile_resolves_linked_device(api: TestClient, redis_client: redis.Redis) -> None:
    _store_customer(redis_client, "42")
    redis_client.set(link_key("dev-1"), "42")
    resp = api.get("/v1/visitors/dev-1/profile", params={"as_of": "2026-01-03T00:00:00Z"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["customer_id"] == "42" and body["resolved_from_anonymous_id"] == "dev-1"
    anon = new_state("a:dev-2")
    ingest(anon, Event(event_id="x", type="page_view", ts=T0, anonymous_id="dev-2"), 600_000)
    write_states(redis_client, [anon])
    body = api.get("/v1/visitors/dev-2/profile").json()
    assert body["kind"] == "anonymous" and body["anonymous_id"] == "dev-2"
    missing = api.get("/v1/visitors/nobody/profile")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"),
        ("2026-01-02T04:04:05.250+01:00", "2026-01-02T03:04:05.250Z"),
        ("1767323045000", "2026-01-02T03:04:05Z"),
        ("1767323045250", "2026-01-02T03:04:05.250Z"),
    ],
)
def test_as_of_formats(
    api: TestClient, redis_client: redis.Redis, as_of: str, expected: str
) -> None:
    _store_customer(redis_client, "c1")
    resp = api.get("/v1/customers/c1/profile", params={"as_of": as_of})
    assert resp.status_code == 200, resp.text
    assert resp.json()["as_of"] == expected


def test_as_of_with_unencoded_plus(api: TestClient, redis_client: redis.Redis) -> None:
    """A ``+01:00`` zone sent raw in the URL arrives as a space; it is still understood."""
    _store_customer(redis_client, "c1")
    resp = api.get("/v1/customers/c1/profile?as_of=2026-01-02T04:04:05+01:00")
    assert resp.status_code == 200, resp.text
    assert resp.json()["as_of"] == "2026-01-02T03:04:05Z"


def test_as_of_defaults_to_now(api: TestClient, redis_client: redis.Redis) -> None:
    _store_customer(redis_client, "c1")
    before = time.time()
    resp = api.get("/v1/customers/c1/profile")
    assert resp.status_code == 200, resp.text
    as_of = resp.json()["as_of"].replace("Z", "+00:00")
    assert before - 1 <= datetime.fromisoformat(as_of).timestamp() <= time.time() + 1


def test_clock_is_an_overridable_dependency(redis_url: str, redis_client: redis.Redis) -> None:
    _store_customer(redis_client, "c1")
    app = create_app(SETTINGS, redis_url)
    app.dependency_overrides[get_now_ms] = lambda: T0
    with TestClient(app) as client:
        assert client.get("/v1/customers/c1/profile").json()["as_of"] == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize(
    "as_of", ["yesterday", "2026-01-02T03:04:05", "-99", "", "2026-13-02T03:04:05Z"]
)
def test_bad_as_of_is_422(api: TestClient, redis_client: redis.Redis, as_of: str) -> None:
    _store_customer(redis_client, "c1")
    resp = api.get("/v1/customers/c1/profile", params={"as_of": as_of})
    assert resp.status_code == 422
    body = resp.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "bad_as_of"
    assert repr(as_of) in body["detail"]
    assert "RFC 3339" in body["detail"]


def test_unknown_customer_is_404(api: TestClient) -> None:
    resp = api.get("/v1/customers/nobody/profile")
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "detail": "no profile for customer 'nobody'"}


def test_framework_errors_share_the_error_shape(api: TestClient) -> None:
    resp = api.get("/v1/customers/" + "x" * 129 + "/profile")
    assert resp.status_code == 422
    body = resp.json()
    assert body["error"] == "validation_error"
    assert "customer_id" in body["detail"]

    resp = api.get("/no/such/route")
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found"
    assert set(resp.json()) == {"error", "detail"}

    resp = api.post("/healthz")
    assert resp.status_code == 405
    assert resp.json()["error"] == "method_not_allowed"


def test_health_and_ready(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    resp = api.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ready",
        "checks": {"redis": "ok", "decisions": "ok"},
    }


def test_redis_unreachable_is_503_not_500(dead_api: TestClient) -> None:
    start = time.monotonic()
    resp = dead_api.get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "not_ready"
    assert "ConnectionError" in body["checks"]["redis"]

    resp = dead_api.get("/v1/customers/42/profile")
    assert resp.status_code == 503
    assert resp.json()["error"] == "redis_unavailable"
    assert "missing.sock" in resp.json()["detail"]
    assert time.monotonic() - start < 3  # fails fast

    assert dead_api.get("/healthz").status_code == 200  # alive, just not ready


def test_hanging_redis_times_out() -> None:
    """A Redis that accepts connections but never answers: bounded 503s, never a hang."""
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(64)
        url = f"redis://127.0.0.1:{hang.getsockname()[1]}/0"
        with TestClient(create_app(SETTINGS, url)) as client:
            start = time.monotonic()
            resp = client.get("/readyz")
            assert resp.status_code == 503
            assert resp.json()["checks"]["redis"].startswith("TimeoutError")
            # bounded, not a hang (READY_TIMEOUT is 0.9 s; the bound is loose: shared machines)
            assert time.monotonic() - start < 10

            start = time.monotonic()
            resp = client.get("/v1/customers/42/profile")
            assert resp.status_code == 503
            assert resp.json()["error"] == "redis_unavailable"
            assert time.monotonic() - start < 10  # 3 attempts x 0.5 s socket timeout; loose


def test_redis_is_an_overridable_dependency(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    _store_customer(redis_client, "c1")
    app = create_app(SETTINGS, f"unix://{tmp_path}/missing.sock")

    async def real_redis() -> AsyncIterator[aioredis.Redis]:
        client = create_redis(redis_url)
        try:
            yield client
        finally:
            await client.aclose(close_connection_pool=True)

    app.dependency_overrides[get_redis] = real_redis
    with TestClient(app) as client:
        assert client.get("/v1/customers/c1/profile").status_code == 200
        assert client.get("/readyz").status_code == 200


def _sample(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_prefix!r} in:\n{text}")


def test_metrics_use_route_templates(api: TestClient, redis_client: redis.Redis) -> None:
    _store_customer(redis_client, "secret-customer-7")
    assert api.get("/v1/customers/secret-customer-7/profile").status_code == 200
    assert api.get("/v1/customers/secret-customer-7/profile").status_code == 200
    assert api.get("/v1/customers/other-customer-9/profile").status_code == 404
    assert api.get("/random/path-123").status_code == 404

    resp = api.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    route = f'route="{PROFILE_ROUTE}"'
    assert _sample(text, f'nextbest_http_requests_total{{method="GET",{route},status="200"}}') == 2
    assert _sample(text, f'nextbest_http_requests_total{{method="GET",{route},status="404"}}') == 1
    assert (
        _sample(text, 'nextbest_http_requests_total{method="GET",route="unmatched",status="404"}')
        == 1
    )
    assert (
        _sample(text, f'nextbest_http_request_duration_seconds_count{{method="GET",{route}}}') == 3
    )
    assert f'nextbest_http_request_duration_seconds_bucket{{le="0.0005",method="GET",{route}}}' in (
        text
    )
    for raw in ("secret-customer-7", "other-customer-9", "path-123"):
        assert raw not in text


def test_apps_have_separate_registries(redis_url: str) -> None:
    first, second = create_app(SETTINGS, redis_url), create_app(SETTINGS, redis_url)
    with TestClient(first) as a, TestClient(second) as b:
        a.get("/healthz")
        a.get("/healthz")
        b.get("/healthz")
        line = 'nextbest_http_requests_total{method="GET",route="/healthz",status="200"}'
        assert _sample(a.get("/metrics").text, line) == 2
        assert _sample(b.get("/metrics").text, line) == 1


def test_openapi_and_docs(api: TestClient) -> None:
    doc: dict[str, Any] = api.get("/openapi.json").json()
    assert doc["info"]["title"] == "nextbest"
    assert doc["info"]["version"]
    assert {PROFILE_ROUTE, "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    responses = doc["paths"][PROFILE_ROUTE]["get"]["responses"]
    assert {"200", "404", "422", "503"} <= set(responses)
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProfileBody"
    )
    for status in ("404", "422", "503"):
        schema_ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert schema_ref.endswith("/ErrorBody")
    params = {p["name"] for p in doc["paths"][PROFILE_ROUTE]["get"]["parameters"]}
    assert params == {"customer_id", "as_of"}
    assert {"ProfileBody", "ErrorBody", "HealthBody", "ReadyBody"} <= set(
        doc["components"]["schemas"]
    )

    resp = api.get("/docs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "swagger" in resp.text.lower()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_server_over_http(redis_url: str, redis_client: redis.Redis) -> None:
    """``run_server`` under uvicorn in a subprocess: real HTTP, then a clean SIGTERM shutdown."""
    _store_customer(redis_client, "42")
    port = _free_port()
    code = (
        "from nextbest.settings import Settings; from serving.app import run_server; "
        f"run_server(Settings.from_env({{}}), {redis_url!r}, '127.0.0.1', {port})"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=2) as http:
            deadline = time.monotonic() + 10
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
            assert http.get("/readyz").json() == {
                "status": "ready",
                "checks": {"redis": "ok", "decisions": "ok"},
            }
            resp = http.get("/v1/customers/42/profile", params={"as_of": str(T0 + 120_000)})
            assert resp.status_code == 200
            assert resp.json()["revenue_total"] == 15.5
            assert resp.json()["as_of"] == "2026-01-02T03:06:05Z"
            assert http.get("/v1/customers/43/profile").json()["error"] == "not_found"
            assert PROFILE_ROUTE in http.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    # Uvicorn shuts down gracefully, then re-raises SIGTERM (the conventional exit status).
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
    assert "Traceback" not in stderr


def test_as_of_from_1970_on_is_accepted(api: TestClient) -> None:
    """Legacy history reaches back before 2000: an ``as_of`` in 1995 is a valid read."""
    answer = api.get("/v1/customers/nobody/profile?as_of=1995-06-01T00:00:00Z")
    assert answer.status_code == 404 and answer.json()["error"] != "bad_as_of"

"""Access control, CORS and offline docs of the HTTP API (README, "Access control").

The auth matrix covers every route of the app: a route added without a decision on its scope
fails :func:`test_every_route_has_a_decided_scope`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nextbest.settings import Settings
from serving.app import create_app
from serving.auth import ApiKey, AuthConfigError, KeyRing, key_digest, load_keys, new_key

REPO = Path(__file__).resolve().parent.parent

#: Every route and the scope it needs (None: open to all: probes, metrics, docs).
SCOPE_OF: dict[tuple[str, str], str | None] = {
    ("GET", "/v1/customers/{customer_id}/profile"): "read",
    ("GET", "/v1/visitors/{anonymous_id}/profile"): "read",
    ("GET", "/v1/models"): "read",
    ("GET", "/v1/segments"): "read",
    ("GET", "/v1/segments/{name}/members"): "admin",
    ("POST", "/v1/events"): "collect",
    ("GET", "/v1/customers/{customer_id}/next-best-action"): "read",
    ("GET", "/v1/visitors/{anonymous_id}/next-best-action"): "read",
    ("GET", "/v1/customers/{customer_id}/recommendations"): "read",
    ("GET", "/v1/visitors/{anonymous_id}/recommendations"): "read",
    ("GET", "/v1/products/{product_id}/similar"): "read",
    ("DELETE", "/v1/customers/{customer_id}"): "admin",
    ("GET", "/v1/erasures/{request_id}"): "admin",
    ("POST", "/v1/catalog"): "admin",
    ("POST", "/v1/traits"): "admin",
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
}
SCOPES = ("collect", "read", "admin")
KEYS = {scope: new_key() for scope in SCOPES}
RING = KeyRing(tuple(ApiKey(f"k-{s}", key_digest(k), frozenset({s})) for s, k in KEYS.items()))
SETTINGS = Settings.from_env({"NEXTBEST_CORS_ORIGINS": "https://shop.example"})


@pytest.fixture(scope="module")
def api(redis_url: str) -> Iterator[TestClient]:
    app = create_app(SETTINGS, redis_url, collect_disabled="no broker in this test", auth=RING)
    with TestClient(app) as client:
        yield client


def _call(
    api: TestClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    url = re.sub(r"\{[a-z_]+\}", "x1", path).replace("erasures/x1", "erasures/" + "0" * 32)
    url += "?source=crm" if path == "/v1/traits" else ""
    if method == "POST":
        resp: httpx.Response = api.post(url, content=b'{"events": []}', headers=headers)
    else:
        resp = api.request(method, url, headers=headers)
    return resp


def test_every_route_has_a_decided_scope(api: TestClient) -> None:
    """The table above is the app's route list (its OpenAPI document): a new route must be
    given a scope here."""
    paths = api.get("/openapi.json").json()["paths"]
    routes = {(m.upper(), path) for path, ops in paths.items() for m in ops}
    assert routes == set(SCOPE_OF)


@pytest.mark.parametrize(("method", "path"), sorted(SCOPE_OF))
def test_auth_matrix(api: TestClient, method: str, path: str) -> None:
    """No key: 401; a key of each other scope: 403; the right key (either header): not 401/403."""
    scope = SCOPE_OF[(method, path)]
    if scope is None:
        assert _call(api, method, path).status_code not in (401, 403)
        return
    missing = _call(api, method, path)
    assert missing.status_code == 401, missing.text
    assert missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    unknown = _call(api, method, path, {"X-API-Key": "nbk_" + "x" * 43})
    assert unknown.status_code == 401 and unknown.json()["error"] == "unauthorized"
    for other in SCOPES:
        if other == scope:
            continue
        wrong = _call(api, method, path, {"X-API-Key": KEYS[other]})
        assert wrong.status_code == 403, wrong.text
        assert wrong.json() == {
            "error": "forbidden",
            "detail": f"the key 'k-{other}' lacks the scope {scope!r}",
        }
    for headers in ({"X-API-Key": KEYS[scope]}, {"Authorization": f"Bearer {KEYS[scope]}"}):
        right = _call(api, method, path, headers)
        assert right.status_code not in (401, 403), right.text


def test_failures_are_counted_and_keys_never_echoed_or_logged(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = new_key()
    with caplog.at_level(logging.DEBUG):
        resp = api.get("/v1/models", headers={"X-API-Key": secret})
        api.get("/v1/segments/vip/members", headers={"X-API-Key": KEYS["read"]})
    assert resp.status_code == 401 and secret not in resp.text
    assert secret not in caplog.text and KEYS["read"] not in caplog.text
    metrics = api.get("/metrics").text
    for reason in ("missing", "unknown", "scope"):
        line = f'nextbest_http_auth_failures_total{{reason="{reason}"}} '
        assert line in metrics and float(metrics.split(line)[1].split()[0]) >= 1


def test_every_hash_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the number of comparisons does not depend on which key matches."""
    import hmac

    calls: list[int] = []
    real = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counted)
    for presented in (KEYS["collect"], KEYS["admin"], "nbk_nothing"):
        calls.clear()
        RING.find(presented)
        assert len(calls) == len(RING.keys)


def test_openapi_states_security_and_the_401_403_answers(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert {"ApiKey", "Bearer"} <= set(doc["components"]["securitySchemes"])
    for (method, path), scope in SCOPE_OF.items():
        op = doc["paths"][path][method.lower()]
        if scope is None:
            assert "security" not in op
        else:
            assert {"401", "403"} <= set(op["responses"]), path
            assert op["security"], path


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("keys: []\n", "keys.yaml:1: keys: expected a non-empty list"),
        (
            "keys:\n  - name: a\n    sha256: " + "ab" * 32 + "\n    scopes: [root]\n",
            ":4: keys[0].scopes",
        ),
        ("keys:\n  - name: A B\n", ":2: keys[0].name"),
        ("keys:\n  - name: a\n    sha256: 12\n", ":3: keys[0].sha256: expected 64 hex digits"),
        ("keys:\n  - {name: a, sha256: " + "0" * 64 + ", scopes: [read], key: x}\n", "keys[0].key"),
        ("nope: 1\n", "keys.yaml: expected a mapping with one field, keys"),
    ],
)
def test_bad_keys_file_names_file_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(AuthConfigError) as err:
        load_keys(path)
    assert where in str(err.value)


# --------------------------------------------------------------------------------------------
# CORS


def test_cors_preflight_and_answers(api: TestClient) -> None:
    shop = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    ok = api.options("/v1/events", headers={**shop, "Access-Control-Request-Headers": "x-api-key"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    assert "X-API-Key" in ok.headers["access-control-allow-headers"]
    evil = api.options("/v1/events", headers={**shop, "Origin": "https://evil.example"})
    assert evil.status_code == 400 and evil.json()["error"] == "cors_rejected"
    nba = api.options(
        "/v1/visitors/a1/next-best-action",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"},
    )
    assert nba.status_code == 200
    # a real (non-preflight) answer carries the header, also when it is a 401
    resp = api.get("/v1/visitors/a1/recommendations", headers={"Origin": "https://shop.example"})
    assert resp.status_code == 401
    assert resp.headers["access-control-allow-origin"] == "https://shop.example"
    # profiles are not for browsers: no CORS at all
    prof = api.options("/v1/customers/c1/profile", headers=shop)
    assert "access-control-allow-origin" not in prof.headers
    got = api.get("/v1/customers/c1/profile", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in got.headers


# --------------------------------------------------------------------------------------------
# offline docs and as_of


def test_docs_load_nothing_from_the_internet(api: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
        urls += re.findall(r"""url:\s*['"]([^'"]+)""", html)
        assert urls, page
        assert not re.search(r"https?://", html.replace("http://127.0.0.1", "")), page
        for url in urls:
            got = api.get(url)
            assert got.status_code == 200 and len(got.content) > 100, url


def test_as_of_schema_is_what_the_parser_accepts(api: TestClient) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from schemas.events import parse_as_of
    from serving.deps import AS_OF_PATTERN

    doc = api.get("/openapi.json").json()
    params = doc["paths"]["/v1/customers/{customer_id}/profile"]["get"]["parameters"]
    (as_of,) = [p for p in params if p["name"] == "as_of"]
    pattern = next(s for s in as_of["schema"]["anyOf"] if s.get("type") == "string")["pattern"]
    assert pattern == AS_OF_PATTERN

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(AS_OF_PATTERN, fullmatch=True))
    def accepted(value: str) -> None:
        assert parse_as_of(value) is not None, value

    accepted()
    for bad in ("", "J", "2026-02-29T00:00:00Z", "4102444800000"):
        resp = api.get("/v1/customers/c1/profile", params={"as_of": bad},
                       headers={"X-API-Key": KEYS["read"]})  # fmt: skip
        assert resp.status_code == 422 and resp.json()["error"] == "bad_as_of", bad


# --------------------------------------------------------------------------------------------
# serve: refuses to start open on a non-loopback address; enforces keys it is given


def _serve(env: dict[str, str], host: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "nextbest", "serve", "--host", host, "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "NEXTBEST_API_KEYS: serve binds 0.0.0.0, not a loopback address"),
        ({"NEXTBEST_AUTH": "off"}, "NEXTBEST_AUTH: off is for the embedded demo only"),
    ],
)
def test_serve_refuses_an_open_api_beyond_loopback(
    tmp_path: Path, redis_url: str, env: dict[str, str], message: str
) -> None:
    base = {"NEXTBEST_HOME": str(tmp_path), "NEXTBEST_REDIS_URL": redis_url}
    proc = _serve({**base, **env}, "0.0.0.0", 1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert message in err.decode()


def test_serve_enforces_configured_keys(tmp_path: Path, redis_url: str) -> None:
    keys = tmp_path / "keys.yaml"
    made = subprocess.run(
        [sys.executable, "-m", "nextbest", "keys", "new", "--name", "backend",
         "--scopes", "read", "--file", str(keys)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    key = made.stdout.strip()
    assert key.startswith("nbk_") and key not in keys.read_text()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "NEXTBEST_HOME": str(tmp_path),
        "NEXTBEST_REDIS_URL": redis_url,
        "NEXTBEST_API_KEYS": str(keys),
        "NEXTBEST_KAFKA_BROKERS": "127.0.0.1:1",
    }
    proc = _serve(env, "127.0.0.1", port)
    try:
        url = f"http://127.0.0.1:{port}/v1/customers/nobody/profile"
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert resp.status_code == 401
        assert httpx.get(url, headers={"X-API-Key": key}, timeout=2).status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)

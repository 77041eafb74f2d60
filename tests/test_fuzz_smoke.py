"""A tiny run of the fuzz (``bench/fuzz.py``): no exception, and failures are really counted.

The full run (a million decoder inputs, 150,000 requests) is ``python -m bench.fuzz``; here a few
thousand inputs check that the harness works and that nothing new breaks. A bug the fuzz finds
and that is not fixed yet goes into :data:`KNOWN_EXCEPTIONS` / :data:`KNOWN_VIOLATIONS`, pinned by
a strict ``xfail`` test (none today: the two it found are fixed and tested at the end).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from bench.fuzz import (
    DECODER_EXPECT,
    DECODER_STRATEGIES,
    HTTP_STRATEGIES,
    MAX_SAVED,
    Corpus,
    Data,
    HttpInput,
    Route,
    ServerError,
    Surface,
    build_corpus,
    call_asgi,
    check_decoded,
    fuzz_decoder,
    fuzz_http,
    run_http,
    save_failures,
    seed_profiles,
)
from features.profile import ingest, new_state
from features.store import write_states
from nextbest.settings import Settings
from schemas.events import Event, decode_event
from serving.app import create_app
from tests.conftest import REPO

#: Signatures of exceptions of known, unfixed bugs (see the xfail tests at the end).
KNOWN_EXCEPTIONS: frozenset[str] = frozenset()
#: Violation kinds of known, unfixed bugs.
KNOWN_VIOLATIONS: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus(5, customers=40, days=7)


def _no_new_failures(result: dict[str, Any]) -> None:
    assert set(result["exception_signatures"]) <= KNOWN_EXCEPTIONS, result
    assert set(result["violations"]) <= KNOWN_VIOLATIONS, result


def test_tiny_decoder_fuzz(corpus: Corpus) -> None:
    tally = fuzz_decoder(2000, seed=11, corpus=corpus)
    r = tally.as_dict()
    assert r["inputs"] == 2000
    assert sum(r["strategies"].values()) == sum(r["outcomes"].values()) == 2000
    assert set(r["strategies"]) == {name for name, _, _ in DECODER_STRATEGIES}
    assert r["exceptions"] == sum(r["exception_signatures"].values())
    _no_new_failures(r)
    assert r["exceptions"] == 0  # the decoder never raises
    assert r["outcomes"]["accepted"] > 100 and r["outcomes"]["invalid_json"] > 100
    assert len({o for o in r["outcomes"] if ":" in o}) > 10  # field-level reasons are reached


def test_tiny_http_fuzz(
    redis_url: str, redis_client: redis.Redis, corpus: Corpus, kafka_brokers: str
) -> None:
    try:
        r = run_http(200, 11, redis_url, corpus, kafka_brokers).as_dict()
    finally:
        redis_client.flushall()
    assert r["inputs"] == sum(r["strategies"].values()) == 200
    assert set(r["strategies"]) == {name for name, _, _ in HTTP_STRATEGIES}
    _no_new_failures(r)
    assert r["exceptions"] == sum(r["exception_signatures"].values())
    assert {"200", "404", "405", "422"} <= set(r["outcomes"])


def test_same_seed_same_counts(corpus: Corpus) -> None:
    def counts(seed: int) -> dict[str, Any]:
        r = fuzz_decoder(300, seed=seed, corpus=corpus).as_dict()
        return {k: r[k] for k in ("strategies", "outcomes", "violations")}

    assert counts(3) == counts(3)
    assert counts(3) != counts(4)


def test_a_raising_target_is_counted(corpus: Corpus, tmp_path: Path) -> None:
    raised: list[int] = []

    def flaky(data: Data) -> str:
        if len(data) % 2:
            raised.append(len(data))
            raise ValueError(f"odd length {len(data)}")
        return "accepted"

    tally = fuzz_decoder(500, seed=2, corpus=corpus, check=flaky)
    assert len(raised) > MAX_SAVED
    assert tally.exceptions == len(raised)
    assert tally.signatures == Counter({"ValueError in test_fuzz_smoke.py:flaky": len(raised)})
    assert tally.outcomes["exception"] == len(raised)
    assert len(tally.failures) == MAX_SAVED
    assert all(
        f.kind == "exception" and "ValueError: odd length" in f.error for f in tally.failures
    )

    path = tmp_path / "failures.jsonl"
    assert save_failures(path, [tally]) == MAX_SAVED
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["input"]["length"] for row in rows] == raised[:MAX_SAVED]
    assert all(
        base64.b64decode(row["input"]["base64"]) or not row["input"]["length"] for row in rows
    )


def test_a_wrong_answer_is_a_violation(corpus: Corpus) -> None:
    tally = fuzz_decoder(400, seed=2, corpus=corpus, check=lambda _: "rejected")
    expected = sum(tally.strategies[name] for name in DECODER_EXPECT)
    assert expected > 0
    assert tally.exceptions == 0
    assert tally.violations == Counter({"valid_rejected": expected})


def test_5xx_and_raising_app_are_exceptions(corpus: Corpus) -> None:
    seen: Counter[str] = Counter()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "PUT":
            seen["raised"] += 1
            raise RuntimeError("boom")
        status, body = 404, b'{"error":"not_found","detail":"x"}'
        if method == "POST":
            seen["5xx"] += 1
            status = 503
        elif method == "OPTIONS":
            seen["bad_shape"] += 1
            status, body = 400, b"plain text"
        start: Message = {"type": "http.response.start", "status": status, "headers": []}
        await send(start)
        await send({"type": "http.response.body", "body": body})

    routes = (
        Route("/v1/customers/{customer_id}/profile", frozenset({"GET"}), ("customer_id",)),
        Route("/healthz", frozenset({"GET", "HEAD"})),
    )
    surface = Surface(routes, ("c-1",), ("a-1",), corpus)
    tally = asyncio.run(fuzz_http(app, surface, 600, seed=4))
    assert seen["raised"] > 0 and seen["5xx"] > 0 and seen["bad_shape"] > 0
    assert tally.exceptions == seen["raised"] + seen["5xx"]
    assert tally.signatures == Counter(
        {
            "RuntimeError in test_fuzz_smoke.py:app": seen["raised"],
            "ServerError in fuzz.py:check_exchange": seen["5xx"],
        }
    )
    # profile_ok must answer 200: this app says 404 to every GET.
    ok = tally.strategies["profile_ok"]
    assert tally.violations == Counter(
        {"valid_request_failed": ok, "error_shape": seen["bad_shape"]}
    )


def test_a_hanging_app_is_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.fuzz.REQUEST_TIMEOUT", 0.05)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(10)

    with pytest.raises(ServerError, match="no complete answer"):
        asyncio.run(call_asgi(app, HttpInput("GET", b"/")))


def test_command_line_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "fuzz", "--decoder", "300", "--http", "0", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(proc.stdout)
    assert set(report["targets"]) == {"decoder"}
    assert report["targets"]["decoder"]["inputs"] == 300
    assert report["exceptions"] == 0
    assert proc.returncode == (1 if report["violations"] else 0), proc.stderr


# ---------------------------------------------------------------------------------------------
# bugs the fuzz found (fixed): deep properties are rejected, far reads do not overflow


def _deep_properties(depth: int) -> bytes:
    nested = b"[" * depth + b"]" * depth
    return (
        b'{"event_id":"e","type":"page_view","ts":1767323045000,"customer_id":"c",'
        b'"properties":{"a":' + nested + b"}}"
    )


def test_fuzz_found_deeply_nested_properties_rejected() -> None:
    assert check_decoded(_deep_properties(600))
    assert decode_event(_deep_properties(600)).reason == "bad_value:properties"  # type: ignore[union-attr]


def test_fuzz_found_profile_far_from_as_of(
    redis_url: str, redis_client: redis.Redis, corpus: Corpus
) -> None:
    customers, _ = seed_profiles(redis_url, corpus, keys=5)
    future = new_state("c:future")
    ev = Event(event_id="f", type="page_view", ts=4_070_908_800_000, customer_id="future")
    ingest(future, ev, 600_000)
    write_states(redis_client, [future])
    app = create_app(Settings.from_env({}), redis_url)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            old = client.get(f"/v1/customers/{customers[0]}/profile?as_of=2000-01-01T00:00:00Z")
            now = client.get("/v1/customers/future/profile")
    finally:
        redis_client.flushall()
    assert (old.status_code, now.status_code) == (200, 200)

"""``POST /v1/events`` against the real broker and Redis the test session starts (conftest.py),
and once end to end through ``nextbest serve`` and ``nextbest run`` in embedded mode."""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from dataflows.records import RawRecord, Rejected, encode_dead_letter
from nextbest.runtime import ensure_topics, free_port
from nextbest.settings import Settings
from schemas.events import MAX_EVENT_BYTES, DecodeError
from schemas.jsonschema import OUT_DIR
from serving.app import create_app
from serving.collect import (
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    RejectedBody,
    dead_letter_record,
    request_body_schema,
)
from tests.test_cli_e2e import _spawn, _stop, _wait_http

NOW_MS = int(time.time() * 1000)


def ev(event_id: str, typ: str = "page_view", **fields: Any) -> dict[str, Any]:
    """A valid event (a customer's unless ``anonymous_id`` or ``customer_id`` is given)."""
    out: dict[str, Any] = {"event_id": event_id, "type": typ, "ts": NOW_MS - 60_000}
    if "anonymous_id" not in fields:
        out["customer_id"] = "42"
    if typ in ("purchase", "refund"):
        out["total"] = 10.5
    out.update(fields)
    return out


class Topics:
    """Fresh topics for one test and a reader of what landed on them."""

    def __init__(self, brokers: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.brokers = brokers
        self.click, self.tx, self.dead = (f"{n}-{suffix}" for n in ("click", "tx", "dead"))
        ensure_topics(brokers, [self.click, self.tx, self.dead], 2)
        self.settings = Settings.from_env(
            {
                "NEXTBEST_TOPIC_CLICKSTREAM": self.click,
                "NEXTBEST_TOPIC_TRANSACTIONS": self.tx,
                "NEXTBEST_TOPIC_DEAD_LETTER": self.dead,
            }
        )

    def read(self, topic: str, expect: int, quiet: float = 1.0) -> list[tuple[bytes | None, bytes]]:
        """Every (key, value) of ``topic``: until ``expect`` arrived and then ``quiet`` seconds
        of silence (to see extra ones), at most 15 s."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(
            {"bootstrap.servers": self.brokers, "group.id": "t", "enable.auto.commit": False}
        )
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            out: list[tuple[bytes | None, bytes]] = []
            deadline = time.monotonic() + 15
            last = time.monotonic()
            while time.monotonic() < deadline:
                if len(out) >= expect and time.monotonic() - last > quiet:
                    break
                for m in c.consume(100, timeout=0.2):
                    if m.error() is None:
                        out.append((m.key(), m.value()))
                        last = time.monotonic()
            return out
        finally:
            c.close()


@pytest.fixture
def topics(kafka_brokers: str) -> Topics:
    return Topics(kafka_brokers)


@pytest.fixture
def api(redis_url: str, redis_client: redis.Redis, topics: Topics) -> Iterator[TestClient]:
    """An app writing to the session broker (fresh topics), lifespan running."""
    app = create_app(topics.settings, redis_url, topics.brokers)
    with TestClient(app) as client:
        yield client


def test_single_event_is_written_with_its_key_and_bytes(api: TestClient, topics: Topics) -> None:
    body = b'  {"event_id": "s1", "type": "page_view", "ts": "2026-03-01T10:00:00Z",\n'
    body += b'   "customer_id": "42", "properties": {"path": "/x"}}\n'
    resp = api.post("/v1/events", content=body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "accepted": 1,
        "rejected": 0,
        "results": [{"index": 0, "event_id": "s1", "status": "accepted", "reason": None}],
    }
    assert resp.headers["x-request-id"]
    assert topics.read(topics.click, 1) == [(b"c:42", body.strip())]
    assert topics.read(topics.tx, 0, quiet=0.3) == []
    assert topics.read(topics.dead, 0, quiet=0.3) == []


def test_batch_is_routed_by_type_in_one_request(api: TestClient, topics: Topics) -> None:
    batch = [
        ev("b1", anonymous_id="dev-1"),
        ev("b2", "purchase", order_id="o1"),
        ev("b3", "add_to_cart", customer_id="7", product_id="p1"),
        ev("b4", "refund", customer_id="7"),
        ev("b5", "decision_outcome", decision_id="d", action_id="a", outcome="click"),
    ]
    raws = [orjson.dumps(e) for e in batch]
    resp = api.post("/v1/events", content=b"[" + b" ,\n ".join(raws) + b"]")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["accepted"], out["rejected"]) == (5, 0)
    assert [r["event_id"] for r in out["results"]] == ["b1", "b2", "b3", "b4", "b5"]
    assert sorted(topics.read(topics.click, 3)) == sorted(
        [(b"a:dev-1", raws[0]), (b"c:7", raws[2]), (b"c:42", raws[4])]
    )
    assert sorted(topics.read(topics.tx, 2)) == sorted([(b"c:42", raws[1]), (b"c:7", raws[3])])
    assert topics.read(topics.dead, 0, quiet=0.3) == []


def test_mixed_batch_answers_per_event_and_dead_letters_the_bad(
    api: TestClient, topics: Topics
) -> None:
    big = ev("bad-big", properties={"blob": "x" * MAX_EVENT_BYTES})
    batch: list[Any] = [
        ev("ok-1"),
        {"event_id": "bad-ts", "type": "page_view", "customer_id": "1"},
        ev("bad-type", "teleport"),
        7,
        big,
        ev("bad-future", ts=NOW_MS + 3 * 86_400_000),
        ev("ok-2", "purchase"),
    ]
    raws = [orjson.dumps(e) for e in batch]
    resp = api.post("/v1/events", content=b"[" + b",".join(raws) + b"]")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["accepted"], out["rejected"]) == (2, 5)
    got = [(r["index"], r["event_id"], r["status"], r["reason"]) for r in out["results"]]
    assert got == [
        (0, "ok-1", "accepted", None),
        (1, "bad-ts", "rejected", "missing_field:ts"),
        (2, "bad-type", "rejected", "unknown_type"),
        (3, None, "rejected", "not_an_object"),
        (4, "bad-big", "rejected", "too_large"),
        (5, "bad-future", "rejected", "future_timestamp"),
        (6, "ok-2", "accepted", None),
    ]
    assert all(r["detail"] is not None for r in out["results"] if r["status"] == "rejected")
    assert topics.read(topics.click, 1) == [(b"c:42", raws[0])]
    assert topics.read(topics.tx, 1) == [(b"c:42", raws[6])]
    dead = [orjson.loads(v) for k, v in topics.read(topics.dead, 5)]
    assert len(dead) == 5
    by_reason = {d["reason"]: d for d in dead}
    assert set(by_reason) == {r[3] for r in got if r[2] == "rejected"}
    assert by_reason["unknown_type"]["data"].encode() == raws[2]
    assert by_reason["not_an_object"]["data"] == "7"
    rid = resp.headers["x-request-id"]
    assert by_reason["unknown_type"]["position"] == f"http:/v1/events:{rid}:2"
    # the 17 KiB event is still one whole dead-letter record (under the 64 KiB bound)
    assert by_reason["too_large"]["data"].encode() == raws[4]


def test_all_rejected_is_422_with_the_per_event_body(api: TestClient, topics: Topics) -> None:
    resp = api.post("/v1/events", json=[{"event_id": "x"}, ev("y", "teleport")])
    assert resp.status_code == 422
    out = resp.json()
    assert out["error"] == "all_rejected" and out["detail"]
    assert (out["accepted"], out["rejected"]) == (0, 2)
    assert [r["reason"] for r in out["results"]] == ["missing_field:type", "unknown_type"]
    assert len(topics.read(topics.dead, 2)) == 2
    single = api.post("/v1/events", json={"event_id": "z", "type": "page_view", "ts": 1})
    assert single.status_code == 422
    assert single.json()["results"][0]["reason"] == "no_identity"
    # a type that is not a string (found by the HTTP fuzz: it was a 500)
    odd = api.post("/v1/events", json=[{"event_id": "w", "type": ["page_view"], "ts": 1}])
    assert odd.status_code == 422 and odd.json()["results"][0]["reason"] == "bad_type:type"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[" + b",".join([orjson.dumps(ev("e"))] * (MAX_BATCH_EVENTS + 1)) + b"]", "501 events"),
        (
            b'[{"event_id":"e","type":"page_view","ts":1,"customer_id":"c","properties":{"p":"'
            + b"x" * MAX_BODY_BYTES
            + b'"}}]',
            "bytes",
        ),
    ],
)
def test_too_large_body_is_413_and_nothing_is_written(
    api: TestClient, topics: Topics, body: bytes, detail: str
) -> None:
    resp = api.post("/v1/events", content=body)
    assert resp.status_code == 413
    assert resp.json()["error"] == "too_large"
    assert detail in resp.json()["detail"]
    for topic in (topics.click, topics.tx, topics.dead):
        assert topics.read(topic, 0, quiet=0.3) == []


def test_body_over_the_limit_without_content_length_is_413(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 65_536
        yield b"[]"

    resp = api.post("/v1/events", content=chunks())
    assert resp.status_code == 413
    assert resp.json()["error"] == "too_large"


@pytest.mark.parametrize("body", [b"", b"{", b'{"event_id": "e",', b"[{}, ", b"[1] x", b"nope"])
def test_malformed_json_is_400(api: TestClient, topics: Topics, body: bytes) -> None:
    resp = api.post("/v1/events", content=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_json"
    assert set(resp.json()) == {"error", "detail"}


def test_deep_nesting_and_empty_batch(api: TestClient) -> None:
    deep = api.post("/v1/events", content=b"[" * 20_000 + b"]" * 20_000)
    assert deep.status_code == 400 and deep.json()["error"] == "invalid_json"
    empty = api.post("/v1/events", content=b"[]")
    assert empty.status_code == 422 and empty.json()["error"] == "empty_batch"


def test_unreachable_broker_is_503_within_the_budget(redis_url: str) -> None:
    app = create_app(
        Settings.from_env({}),
        redis_url,
        f"127.0.0.1:{free_port()}",  # nothing listens there
        collect_ack_timeout=0.5,
    )
    with TestClient(app) as client:
        t0 = time.monotonic()
        resp = client.post("/v1/events", json=[ev("u1"), ev("u2")])
        elapsed = time.monotonic() - t0
        assert resp.status_code == 503
        assert resp.json()["error"] == "broker_unavailable"
        assert "send it again" in resp.json()["detail"]
        assert elapsed < 2.0
        metrics = client.get("/metrics").text
        assert 'nextbest_collect_requests_total{outcome="broker_unavailable"} 1.0' in metrics
        assert "nextbest_collect_events_total{" not in metrics  # nothing counted as accepted


def test_without_a_broker_the_route_is_disabled(redis_url: str, redis_client: redis.Redis) -> None:
    with TestClient(create_app(Settings.from_env({}), redis_url)) as client:
        resp = client.post("/v1/events", json=ev("d1"))
        assert resp.status_code == 503
        assert resp.json()["error"] == "collect_disabled"
        assert "NEXTBEST_KAFKA_BROKERS" in resp.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_metrics_have_bounded_labels(api: TestClient) -> None:
    api.post("/v1/events", json=[ev("m1"), ev("m2", "purchase"), ev("m3", "teleport"), {}])
    api.post("/v1/events", content=b"{")
    text = api.get("/metrics").text
    for line in [
        'nextbest_collect_events_total{status="accepted",type="page_view"} 1.0',
        'nextbest_collect_events_total{status="accepted",type="purchase"} 1.0',
        'nextbest_collect_events_total{status="rejected",type="unknown"} 2.0',
        'nextbest_collect_rejected_total{reason="unknown_type"} 1.0',
        'nextbest_collect_rejected_total{reason="missing_field:event_id"} 1.0',
        "nextbest_collect_ack_seconds_count 1.0",
        'nextbest_collect_requests_total{outcome="partial"} 1.0',
        'nextbest_collect_requests_total{outcome="invalid_json"} 1.0',
        'nextbest_http_requests_total{method="POST",route="/v1/events",status="200"} 1.0',
    ]:
        assert line in text, line
    assert "m1" not in text and "teleport" not in text


def test_openapi_documents_the_route(api: TestClient) -> None:
    op = api.get("/openapi.json").json()["paths"]["/v1/events"]["post"]
    assert op["tags"] == ["events"]
    assert {"200", "400", "413", "422", "503"} <= set(op["responses"])
    assert op["requestBody"]["required"] is True


def test_openapi_states_the_event_contract_as_the_body(api: TestClient) -> None:
    """One event (the published JSON Schema), or a batch of 1..500 values of which at least one
    is a valid event: exactly the bodies answered 2xx (a schema-driven fuzz checks the rest)."""
    op = api.get("/openapi.json").json()["paths"]["/v1/events"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema == request_body_schema()
    one, batch = schema["oneOf"]
    published = orjson.loads((OUT_DIR / "event.json").read_bytes())
    assert {**one, "$schema": published["$schema"], "$id": published["$id"]} == published
    assert batch["contains"] == one and (batch["minItems"], batch["maxItems"]) == (
        1,
        MAX_BATCH_EVENTS,
    )


def test_bodies_valid_by_the_schema_are_accepted_and_the_others_refused(api: TestClient) -> None:
    body = jsonschema.Draft202012Validator(request_body_schema())
    good = ev("g1", quantity=2.0, ts=float(NOW_MS - 60_000))  # JSON: 2.0 is the integer 2
    cases: list[Any] = [good, [good], [{}, 7, good], {}, [{}], [], [ev("b", quantity=1.5)]]
    for case in cases:
        resp = api.post("/v1/events", content=orjson.dumps(case))
        assert (resp.status_code == 200) == body.is_valid(case), (case, resp.text)
        assert resp.status_code in (200, 422), resp.text
        if resp.status_code == 422:  # empty_batch and all_rejected: the documented 422 body
            RejectedBody.model_validate(resp.json())
    assert api.post("/v1/events", content=orjson.dumps([{}, good])).json()["accepted"] == 1


@pytest.mark.parametrize(
    "data",
    [b"{", b"x" * 200_000, "é".encode() * 40_000, b"\xff\xfe" * 50_000, b'{"a":"\x01"}'],
)
def test_dead_letter_record_is_the_dataflows(data: bytes) -> None:
    """serving may not import dataflows: its copy of the record format must stay the same."""
    err = DecodeError("too_large", "a detail")
    for max_bytes in (4096, 65_536, 1_000_000):
        ours = dead_letter_record(data, err, "http:/v1/events:r:3", max_bytes, 123)
        theirs = encode_dead_letter(
            Rejected(RawRecord(data, "http:/v1/events:r:3"), err), max_bytes, 123
        )
        assert ours == theirs
    doc = orjson.loads(dead_letter_record(b"\xff" * 10, err, "p", 4096, 0))
    assert base64.b64decode(doc["data_base64"]) == b"\xff" * 10


def test_serve_embedded_reaches_run(tmp_path: Path) -> None:
    """``nextbest serve`` with no broker configured shares the embedded one with ``nextbest run``
    on the same NEXTBEST_HOME: a posted event becomes a profile."""
    env = {"NEXTBEST_HOME": str(tmp_path / "home"), "NEXTBEST_METRICS_PORT": "0"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_log, run_log = tmp_path / "serve.log", tmp_path / "run.log"
    server = _spawn(["serve", "--port", str(port)], env, serve_log)
    runner = None
    try:
        _wait_http(f"{base}/readyz")
        batch = [ev("e2e-1", customer_id="e2e"), ev("e2e-2", "purchase", customer_id="e2e")]
        resp = httpx.post(f"{base}/v1/events", json=batch, timeout=10)
        assert resp.status_code == 200, (resp.text, serve_log.read_text())
        assert resp.json()["accepted"] == 2
        runner = _spawn(["run", "--quiet"], env, run_log)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:  # (both topics applied: the purchase too)
            got = httpx.get(f"{base}/v1/customers/e2e/profile", timeout=5)
            if got.status_code == 200 and got.json()["events_total"] == 2:
                break
            assert runner.poll() is None, run_log.read_text()
            time.sleep(0.3)
        assert got.status_code == 200, run_log.read_text()
        assert got.json()["customer_id"] == "e2e"
        assert got.json()["revenue_total"] == 10.5
    finally:
        if runner is not None:
            assert _stop(runner, run_log) == 0, run_log.read_text()
        assert _stop(server, serve_log) == 0, serve_log.read_text()


def test_serve_goes_on_without_collect_when_the_broker_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nextbest.runtime
    from nextbest.commands.serve import collect_brokers

    @contextlib.contextmanager
    def no_broker(_settings: Settings) -> Iterator[str]:
        raise nextbest.runtime.RuntimeStartError("tansu broker exited at start with code 1")
        yield "never"

    monkeypatch.setattr(nextbest.runtime, "kafka_brokers", no_broker)
    with collect_brokers(Settings.from_env({"NEXTBEST_HOME": str(tmp_path)})) as (brokers, why):
        assert brokers is None
        assert why is not None and "exited at start" in why

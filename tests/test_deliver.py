"""``nextbest deliver`` against a real HTTP receiver started here (one that fails, times out and
recovers) and the session's real Kafka-protocol broker: signatures, idempotency keys, retries,
dead letters, order per customer, positions committed only for records done, clean stops."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from dataflows.sources import StopRequest
from nextbest.delivery.config import WebhookConfig, WebhookConfigError, load_webhooks
from nextbest.delivery.deadletters import FileDeadLetters, KafkaDeadLetters
from nextbest.delivery.signing import verify
from nextbest.delivery.sources import FilePosition, consume_kafka, follow_file
from nextbest.delivery.worker import Deliverer
from nextbest.runtime import ensure_topics
from tests.conftest import REPO, nextbest_cli

SECRET = "test-secret-\u00e9"  # non-ASCII: the secret is UTF-8 encoded on both sides


# ---------------------------------------------------------------------------------------------
# a real webhook receiver


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that records every POST and answers from a plan: per
    Idempotency-Key a list of actions for successive requests (an int status, or ("sleep", s)
    to hold the response past the client's timeout); after the plan, 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: dict[str, list[Any]] = {}
        self.default: Any = 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key", "")
                with receiver._lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                            "t": time.monotonic(),
                        }
                    )
                    steps = receiver.plan.get(key)
                    action = steps.pop(0) if steps else receiver.default
                if isinstance(action, tuple):
                    time.sleep(action[1])
                    action = 200
                payload = b"nope" if action >= 300 else b"ok"
                self.send_response(action)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def keys(self) -> list[str]:
        with self._lock:
            return [r["headers"]["Idempotency-Key"] for r in self.requests]

    def wait_for(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, wanted {n}"
            time.sleep(0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


# ---------------------------------------------------------------------------------------------
# helpers


def transition(customer: str, segment: str, n: int, direction: str = "entered") -> bytes:
    at_ms = 1_767_323_045_000 + n * 1000
    tid = hashlib.sha256(f"{customer}|{segment}|{direction}|{at_ms}".encode()).hexdigest()[:32]
    return orjson.dumps(
        {
            "transition_id": tid,
            "customer_id": customer,
            "segment": segment,
            "direction": direction,
            "at_ms": at_ms,
            "at": "2026-01-02T03:04:05.000Z",
            "emitted_at": "2026-01-02T03:04:06.000Z",
            "reason": {"rule": "r", "values": {}},
            "values": {"n": n},
            "backfill": False,
        }
    )


def tid(record: bytes) -> str:
    return str(orjson.loads(record)["transition_id"])


def write_config(tmp: Path, url: str, **dest: Any) -> Path:
    doc = {
        "defaults": {
            "timeout": "300ms",
            "max_attempts": 3,
            "backoff_base": "10ms",
            "backoff_cap": "40ms",
        },
        "destinations": [
            {"name": "crm", "url": url, "segments": "*", "secret_env": "HOOK_SECRET", **dest}
        ],
    }
    path = tmp / "webhooks.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def config(tmp: Path, url: str, **dest: Any) -> WebhookConfig:
    return load_webhooks(write_config(tmp, url, **dest), {"HOOK_SECRET": SECRET})


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("destinations: []", "w.yaml: destinations: expected a non-empty list"),
        ("destinations:\n  - {name: a, url: 'http://h/x', segments: '*', secret_env: S, "
         "retries: 3}", "w.yaml: destinations[0].retries: unknown key"),
        ("destinations:\n  - {name: a, url: 'ftp://h/x', segments: '*', secret_env: S}",
         "w.yaml: destinations[0].url: expected an http:// or https:// URL"),
        ("destinations:\n  - {name: a, url: 'http://h/x', segments: '*', secret_env: NOPE}",
         "w.yaml: destinations[0].secret_env: missing secret: environment variable NOPE"),
        ("destinations:\n  - {name: a, url: 'http://h/x', segments: '*'}",
         "w.yaml: destinations[0].secret_env: missing"),
        ("destinations:\n  - {name: a, url: 'http://h/x', segments: [], secret_env: S}",
         "w.yaml: destinations[0].segments: expected"),
        ("destinations:\n  - {name: a, url: 'http://h/x', segments: '*', secret_env: S, "
         "timeout: soon}", "w.yaml: destinations[0].timeout: expected a duration"),
        ("destinations:\n  - {name: a, url: 'http://h/x', segments: '*', secret_env: S}\n"
         "  - {name: a, url: 'http://h/y', segments: '*', secret_env: S}",
         "w.yaml: destinations[1].name: duplicate"),
        ("webhooks: []", "w.yaml: webhooks: unknown key"),
        ("destinations: [\n", "w.yaml: line 2: not valid YAML"),
    ],
)  # fmt: skip
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(WebhookConfigError) as info:
        load_webhooks(path, {"S": "x"})
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(message), info.value


def test_yaml_config_with_defaults_and_segments(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "defaults:\n  timeout: 2s\n  max_attempts: 4\n"
        "destinations:\n"
        "  - name: crm\n    url: https://crm.example.com/hooks?x=1\n"
        "    segments: [cart_abandoned, at_risk]\n    secret_env: S\n    timeout: 750ms\n"
        "  - name: all\n    url: http://10.0.0.1:8080/\n    segments: '*'\n    secret_env: S\n"
    )
    cfg = load_webhooks(path, {"S": "x"})
    crm, everything = cfg.destinations
    assert (crm.timeout_s, crm.max_attempts, everything.timeout_s) == (0.75, 4, 2.0)
    assert (crm.backoff_base_s, crm.backoff_cap_s) == (0.5, 60.0)
    assert [d.name for d in cfg.for_segment("at_risk")] == ["crm", "all"]
    assert [d.name for d in cfg.for_segment("lapsed_30d")] == ["all"]


# ---------------------------------------------------------------------------------------------
# delivery from a file


def run_file(
    tmp: Path, cfg: WebhookConfig, source: Path, stop: StopRequest | None = None
) -> tuple[int, Path]:
    dead_path = tmp / "dead.jsonl"
    dead = FileDeadLetters(dead_path)
    stop = stop or StopRequest()
    deliverer = Deliverer(cfg, dead, stop.event)
    try:
        done = follow_file(source, FilePosition(tmp / "pos.json"), deliverer, stop, until_end=True)
    finally:
        deliverer.close()
        dead.close()
    return done, dead_path


def test_signed_retried_in_order_and_dead_lettered(tmp_path: Path, receiver: Receiver) -> None:
    cfg = config(tmp_path, receiver.url, timeout="1s")  # no spurious timeouts on a busy machine
    a1, a2, a3 = (transition("a", "cart_abandoned", n) for n in (1, 2, 3))
    b1, b2 = (transition("b", "at_risk", n) for n in (1, 2))
    c1, c2 = transition("c", "at_risk", 1), transition("c", "at_risk", 2)
    receiver.plan = {
        tid(a1): [500, 503],  # fails twice, then recovers
        tid(a2): [("sleep", 2.0)],  # times out once
        tid(b1): [400],  # a client error: not retried
        tid(c1): [500, 500, 500],  # out of attempts (3)
        tid(b2): [429],  # throttled: retried
    }
    source = tmp_path / "segment-events.jsonl"
    source.write_bytes(b"".join(r + b"\n" for r in (a1, b1, a2, c1, b2, a3, c2)))
    before = {
        o: sample("nextbest_delivery_attempts_total", destination="crm", outcome=o)
        for o in ("success", "server_error", "timeout", "client_error", "throttled")
    }
    dead_before = sample("nextbest_delivery_dead_letters_total", destination="crm")

    done, dead_path = run_file(tmp_path, cfg, source)

    assert done == 7
    keys = receiver.keys()
    assert keys == [tid(r) for r in (a1, a1, a1, b1, a2, a2, c1, c1, c1, b2, b2, a3, c2)]
    for req in receiver.requests:  # signed over the exact bytes, idempotency key = id
        h = req["headers"]
        assert verify(req["body"], SECRET, h["X-Nextbest-Signature"])
        assert h["Idempotency-Key"] == orjson.loads(req["body"])["transition_id"]
        assert h["Content-Type"] == "application/json"
        assert req["path"] == "/hook"
    assert not verify(receiver.requests[0]["body"], "other", receiver.requests[0]["headers"]
                      ["X-Nextbest-Signature"])  # fmt: skip
    # per customer, each record is done (delivered or given up) before the next one is sent
    for customer in ("a", "b", "c"):
        sent = [tid(r) for r in (a1, a2, a3, b1, b2, c1, c2)
                if orjson.loads(r)["customer_id"] == customer]  # fmt: skip
        assert list(dict.fromkeys(k for k in keys if k in sent)) == sent
    dead = [json.loads(line) for line in dead_path.read_text().splitlines()]
    assert [(d["record"]["transition_id"], d["attempts"], d["status"], d["reason"])
            for d in dead] == [(tid(b1), 1, 400, "not_retriable"),
                               (tid(c1), 3, 500, "attempts_exhausted")]  # fmt: skip
    assert all(d["destination"] == "crm" and d["url"] == receiver.url for d in dead)
    delta = {
        o: sample("nextbest_delivery_attempts_total", destination="crm", outcome=o) - v
        for o, v in before.items()
    }
    assert delta == {"success": 5, "server_error": 5, "timeout": 1, "client_error": 1,
                     "throttled": 1}  # fmt: skip
    assert sample("nextbest_delivery_dead_letters_total", destination="crm") - dead_before == 2
    assert sample("nextbest_delivery_latency_seconds_count", destination="crm") >= 13


def test_segments_filter_and_bad_records(tmp_path: Path, receiver: Receiver) -> None:
    cfg = config(tmp_path, receiver.url, segments=["at_risk"])
    wanted, other = transition("a", "at_risk", 1), transition("a", "lapsed_30d", 2)
    source = tmp_path / "in.jsonl"
    source.write_bytes(wanted + b"\n\n" + other + b'\nnot json\n{"customer_id": "x"}\n')
    done, dead_path = run_file(tmp_path, cfg, source)
    assert done == 4 and receiver.keys() == [tid(wanted)]
    dead = [json.loads(line) for line in dead_path.read_text().splitlines()]
    assert [(d["reason"], d["destination"], d["record"]) for d in dead] == [
        ("bad_record", None, "not json"),
        ("bad_record", None, {"customer_id": "x"}),
    ]


def test_file_mode_resumes_and_abandons_on_stop(tmp_path: Path, receiver: Receiver) -> None:
    cfg = config(tmp_path, receiver.url, max_attempts=50, backoff_base="1s", backoff_cap="1s")
    r1, r2, r3, r4 = (transition("a", "at_risk", n) for n in range(4))
    source = tmp_path / "in.jsonl"
    source.write_bytes(r1 + b"\n" + r2 + b"\n")
    assert run_file(tmp_path, cfg, source)[0] == 2
    # a restart reads only what was appended since, and not a line still being written
    with source.open("ab") as fh:
        fh.write(r3 + b"\n" + r4[:10])
    assert run_file(tmp_path, cfg, source)[0] == 1
    assert receiver.keys() == [tid(r1), tid(r2), tid(r3)]
    # r4 fails and waits for its retry: a stop abandons it, the position stays before it
    with source.open("ab") as fh:
        fh.write(r4[10:] + b"\n")
    receiver.plan = {tid(r4): [500] * 100}
    stop = StopRequest()
    threading.Timer(0.3, stop.set, args=("test",)).start()
    t0 = time.monotonic()
    assert run_file(tmp_path, cfg, source, stop)[0] == 0
    tried = len(receiver.keys()) - 3  # full jitter: 1 attempt, or more if a wait was short
    assert time.monotonic() - t0 < 2 and tried >= 1 and set(receiver.keys()[3:]) == {tid(r4)}
    receiver.plan = {}
    assert run_file(tmp_path, cfg, source)[0] == 1
    assert receiver.keys()[3:] == [tid(r4)] * (tried + 1)
    assert not (tmp_path / "dead.jsonl").read_text()


# ---------------------------------------------------------------------------------------------
# delivery from Kafka


def produce(brokers: str, topic: str, records: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers})
    for r in records:
        p.produce(topic, key=str(orjson.loads(r)["customer_id"]).encode(), value=r)
    assert p.flush(10) == 0


def read_topic(brokers: str, topic: str, n: int, timeout: float = 15) -> list[Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": uuid.uuid4().hex,
                  "enable.auto.commit": False})  # fmt: skip
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append((m.key(), json.loads(m.value() or b"")))
    finally:
        c.close()
    return out


def test_kafka_offsets_committed_only_when_done(
    tmp_path: Path, receiver: Receiver, kafka_brokers: str
) -> None:
    topic, dead_topic = f"seg-{uuid.uuid4().hex[:8]}", f"seg-dead-{uuid.uuid4().hex[:8]}"
    group = f"deliver-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_brokers, [topic, dead_topic], 1)
    cfg = config(tmp_path, receiver.url, max_attempts=99, backoff_base="1s", backoff_cap="1s")
    a = [transition("a", "at_risk", n) for n in range(3)]
    b = [transition("b", "cart_abandoned", n) for n in range(2)]
    records = [a[0], b[0], a[1], b[1], a[2]]
    produce(kafka_brokers, topic, records)
    receiver.plan = {tid(b[0]): [400], tid(a[1]): [500] * 100}

    def consume(stop: StopRequest, until_end: bool) -> int:
        dead = KafkaDeadLetters(kafka_brokers, dead_topic)
        deliverer = Deliverer(cfg, dead, stop.event)
        try:
            return consume_kafka(kafka_brokers, topic, group, deliverer, stop,
                                 until_end=until_end, poll_s=0.05,
                                 config={"session.timeout.ms": 6000})  # fmt: skip
        finally:
            deliverer.close()
            dead.close()

    # first run: a[0] delivered, b[0] dead-lettered at once, a[1] fails and is being retried
    stop = StopRequest()
    box: list[int] = []
    worker = threading.Thread(target=lambda: box.append(consume(stop, False)))
    worker.start()
    try:
        receiver.wait_for(3)
    finally:
        stop.set("test")
        worker.join(10)
    assert not worker.is_alive() and box == [2]
    n0 = len(receiver.requests)  # a[1] tried once (or more, if a jittered wait was short)
    assert receiver.keys()[:3] == [tid(a[0]), tid(b[0]), tid(a[1])]
    assert set(receiver.keys()[3:]) <= {tid(a[1])}
    dead = read_topic(kafka_brokers, dead_topic, 1)
    assert [(k, d["record"]["transition_id"], d["attempts"], d["status"]) for k, d in dead] == [
        (b"b", tid(b[0]), 1, 400)
    ]

    # a restart in the same group resumes at the abandoned record, not before it
    receiver.plan = {}
    assert consume(StopRequest(), True) == 3
    assert receiver.keys()[n0:] == [tid(a[1]), tid(b[1]), tid(a[2])]
    # and everything done was committed: a third run has nothing to deliver
    assert consume(StopRequest(), True) == 0
    assert len(receiver.requests) == n0 + 3


# ---------------------------------------------------------------------------------------------
# the CLI, end to end


def cli_env(tmp: Path, webhooks: Path, **extra: str) -> dict[str, str]:
    return {"NEXTBEST_HOME": str(tmp / "home"), "NEXTBEST_WEBHOOKS": str(webhooks),
            "NEXTBEST_METRICS_PORT": "0", "HOOK_SECRET": SECRET, **extra}  # fmt: skip


def test_cli_file_mode_and_config_errors(tmp_path: Path, receiver: Receiver) -> None:
    webhooks = write_config(tmp_path, receiver.url)
    records = [transition("a", "at_risk", n) for n in range(3)]
    source = tmp_path / "segment-events.jsonl"
    source.write_bytes(b"".join(r + b"\n" for r in records))
    env = cli_env(tmp_path, webhooks)
    out = nextbest_cli("deliver", "--file", str(source), "--until-end", env=env)
    assert "3 records done" in out.stderr
    assert receiver.keys() == [tid(r) for r in records]
    again = nextbest_cli("deliver", "--file", str(source), "--until-end", env=env)
    assert "0 records done" in again.stderr and len(receiver.requests) == 3

    bad = nextbest_cli("deliver", "--file", str(source), "--until-end", check=False,
                       env={**env, "HOOK_SECRET": ""})  # fmt: skip
    assert bad.returncode == 2
    assert f"{webhooks}: destinations[0].secret_env: missing secret" in bad.stderr
    none = nextbest_cli("deliver", "--file", str(source), check=False,
                        env={**env, "NEXTBEST_WEBHOOKS": ""})  # fmt: skip
    assert none.returncode == 2 and "NEXTBEST_WEBHOOKS" in none.stderr


def test_cli_kafka_stops_cleanly_on_sigterm(
    tmp_path: Path, receiver: Receiver, kafka_brokers: str
) -> None:
    topic = f"seg-cli-{uuid.uuid4().hex[:8]}"
    records = [transition(c, "at_risk", n) for n in range(2) for c in ("x", "y")]
    ensure_topics(kafka_brokers, [topic], 2)
    produce(kafka_brokers, topic, records)
    webhooks = write_config(tmp_path, receiver.url)
    env = cli_env(tmp_path, webhooks, NEXTBEST_KAFKA_BROKERS=kafka_brokers,
                  NEXTBEST_TOPIC_SEGMENT_EVENTS=topic,
                  NEXTBEST_TOPIC_DELIVERY_DEAD_LETTER=topic + "-dead",
                  NEXTBEST_DELIVERY_GROUP=topic)  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")} | env
    proc = subprocess.Popen([sys.executable, "-m", "nextbest", "deliver"], env=full_env,
                            cwd=REPO, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        receiver.wait_for(4, timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "4 records done (SIGTERM)" in err
    assert sorted(receiver.keys()) == sorted(tid(r) for r in records)
    for customer in ("x", "y"):
        mine = [tid(r) for r in records if orjson.loads(r)["customer_id"] == customer]
        assert [k for k in receiver.keys() if k in mine] == mine  # noqa: SIM118

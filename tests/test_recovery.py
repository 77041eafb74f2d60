"""Crash recovery: SIGKILL `nextbest run` mid-stream, start it again, get the same profiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer

from nextbest.runtime import ensure_topics, free_port
from tests.conftest import REPO, metric_sum

# One topic with one partition for both kinds of events: both runs then see the events in the
# same order, whatever their speed. (Across partitions the interleaving varies run to run; see
# README "Order and lateness" for what that means for identity links.)
TOPIC = "rk-all"
TOPICS = {"NEXTBEST_TOPIC_CLICKSTREAM": TOPIC, "NEXTBEST_TOPIC_TRANSACTIONS": TOPIC}
PARTITIONS = 1


def _produce(brokers: str, lines: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    for line in lines:
        try:
            d = orjson.loads(line)
            assert isinstance(d, dict)
        except (orjson.JSONDecodeError, AssertionError):
            d = {}
        topic = TOPIC
        key = str(d.get("customer_id") or d.get("anonymous_id") or "").encode()
        while True:
            try:
                p.produce(topic, key=key, value=line)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0


def _sentinels(last_ts: int) -> list[tuple[str, int, bytes]]:
    out = []
    for part in range(PARTITIONS):
        cid = f"zz-sentinel-{part}"
        body = {"event_id": cid, "type": "page_view", "ts": last_ts + 60_000, "customer_id": cid}
        out.append((TOPIC, part, orjson.dumps(body)))
    return out


def _produce_sentinels(brokers: str, last_ts: int) -> None:
    p = Producer({"bootstrap.servers": brokers})
    for topic, part, value in _sentinels(last_ts):
        p.produce(topic, partition=part, value=value)
    assert p.flush(30) == 0


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    full.update(env)
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "nextbest", "run", "--json", "--quiet"],
            env=full, stdout=fh, stderr=fh, cwd=REPO,
        )  # fmt: skip


def _wait_sentinels(client: redis.Redis, log: Path, timeout: float = 120) -> None:
    keys = [f"nb:{{c:zz-sentinel-{p}}}:profile" for p in range(PARTITIONS)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.exists(k) for k in keys):
            return
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach the end of every partition:\n{log.read_text()}")


def _dump(client: redis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        # RFM boundaries and model checkpoints are published every N changes or T seconds:
        # when they are written depends on timing; the profiles must not.
        if key == b"nb:rfm:boundaries" or key.startswith(b"nb:{model:"):
            continue
        kind = client.type(key)
        out[key] = client.hgetall(key) if kind == b"hash" else client.get(key)
    return out


def _stop(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    return json.loads(log.read_text().strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_profiles(
    kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    from nextbest.simulator import SimConfig, generate
    from schemas import Event, decode_event

    lines = list(generate(SimConfig(customers=600, days=20, seed=11, bad_rate=0.01)))
    last_ts = max(e.ts for e in map(decode_event, lines) if isinstance(e, Event))
    half = len(lines) // 2
    ensure_topics(kafka_brokers, [TOPIC, "rk-dead"], PARTITIONS)
    base_env = {
        "NEXTBEST_KAFKA_BROKERS": kafka_brokers,
        "NEXTBEST_TOPIC_DEAD_LETTER": "rk-dead",
        "NEXTBEST_ALLOWED_LATENESS": "365d",
        **TOPICS,
    }
    db_killed, db_reference = f"{redis_url}?db=2", f"{redis_url}?db=3"
    killed = redis.Redis.from_url(db_killed)
    reference = redis.Redis.from_url(db_reference)
    killed.flushdb()
    reference.flushdb()

    # The interrupted run: consume the first half, SIGKILL mid-stream, produce the rest, resume.
    port = free_port()
    env_b = {**base_env, "NEXTBEST_REDIS_URL": db_killed, "NEXTBEST_HOME": str(tmp_path / "b"),
             "NEXTBEST_RECOVERY_DIR": str(tmp_path / "recovery"),
             "NEXTBEST_SNAPSHOT_INTERVAL": "1", "NEXTBEST_METRICS_PORT": str(port)}  # fmt: skip
    log_b = tmp_path / "run-b.log"
    proc = _start(env_b, log_b)
    _produce(kafka_brokers, lines[:half])
    deadline = time.monotonic() + 60
    while (
        metric_sum(port, "nextbest_events_read_total") < half // 2 and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    time.sleep(1.5)  # at least one snapshot
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert metric_sum(port, "nextbest_events_read_total") == 0.0  # really gone
    _produce(kafka_brokers, lines[half:])
    _produce_sentinels(kafka_brokers, last_ts)
    proc = _start({**env_b, "NEXTBEST_METRICS_PORT": "0"}, log_b)
    _wait_sentinels(killed, log_b)
    resumed = _stop(proc, log_b)
    # It resumed from its snapshot rather than from the beginning of the topics.
    assert 0 < resumed["read"] < len(lines)

    # The reference: one uninterrupted run over the same topics.
    env_a = {**base_env, "NEXTBEST_REDIS_URL": db_reference, "NEXTBEST_HOME": str(tmp_path / "a"),
             "NEXTBEST_METRICS_PORT": "0"}  # fmt: skip
    log_a = tmp_path / "run-a.log"
    proc = _start(env_a, log_a)
    _wait_sentinels(reference, log_a)
    full = _stop(proc, log_a)
    assert full["read"] == len(lines) + len(_sentinels(last_ts))

    a, b = _dump(reference), _dump(killed)
    assert len(a) > 600
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    detail = [
        (
            k,
            {
                f: (a[k].get(f), b[k].get(f))
                for f in set(a[k]) | set(b[k])
                if a[k].get(f) != b[k].get(f)
            },
        )
        for k in different[:3]
        if isinstance(a[k], dict)
    ]
    assert different == [], detail

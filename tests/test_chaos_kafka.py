"""Chaos on the broker side: poison messages among valid events.

Partitions added mid-stream cannot be run end to end against the embedded broker (tansu 0.6): it
has no CreatePartitions, and deleting a topic that a consumer is fetching wedges it (metadata
requests of that process hang). The topic watch and the offset policy are tested against the
real broker in ``test_reliability.py``."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from nextbest.runtime import ensure_topics, free_port
from schemas import DecodeError, decode_event
from tests.chaos import (
    differences,
    dump,
    produce,
    sentinel_lines,
    start_run,
    stop_run,
    wait_read,
    wait_sentinels,
)
from tests.conftest import nextbest_cli

pytestmark = pytest.mark.slow

POISON = [
    b"x" * 1_000_000,  # 1 MB of text
    b"\x01" * 200_000,  # control characters: JSON escapes them to 1.2 MB
    b"[" * 10_000 + b"]" * 10_000,  # nesting 10,000 deep
    b'{"event_id":"\xff\xfe","type":"page_view"}',  # invalid UTF-8
    b"",  # empty
]


def _dead_letters(brokers: str, topic: str, n: int, timeout: float = 30) -> list[bytes]:
    c = Consumer({"bootstrap.servers": brokers, "group.id": uuid.uuid4().hex})
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < n:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(msg.value())
        while (msg := c.poll(1.0)) is not None:  # nothing more may come
            if msg.error() is None:
                out.append(msg.value())
    finally:
        c.close()
    return out


def test_poison_messages_are_dead_lettered_once_and_the_flow_goes_on(
    kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    from nextbest.simulator import SimConfig, generate

    good = list(generate(SimConfig(customers=150, days=10, seed=3, bad_rate=0.01)))
    lines = list(good)
    for i, p in enumerate(POISON):
        lines.insert((i + 1) * len(good) // (len(POISON) + 1), p)
    last_ts = max(e.ts for e in map(decode_event, good) if not isinstance(e, DecodeError))
    lines += sentinel_lines(last_ts, 1)
    ensure_topics(kafka_brokers, ["poison-in", "poison-dead"], 1)
    produce(kafka_brokers, "poison-in", lines, max_bytes=2_000_000)

    url = f"{redis_url}?db=6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    port = free_port()
    log = tmp_path / "run.log"
    env = {"NEXTBEST_KAFKA_BROKERS": kafka_brokers, "NEXTBEST_TOPIC_CLICKSTREAM": "poison-in",
           "NEXTBEST_TOPIC_TRANSACTIONS": "poison-in", "NEXTBEST_TOPIC_DEAD_LETTER": "poison-dead",
           "NEXTBEST_ALLOWED_LATENESS": "365d", "NEXTBEST_REDIS_URL": url,
           "NEXTBEST_HOME": str(tmp_path / "home"), "NEXTBEST_METRICS_PORT": str(port)}  # fmt: skip
    proc = start_run(env, log)
    wait_sentinels(client, 1, log)
    wait_read(port, len(lines), log)
    summary = stop_run(proc, log)  # it ran through: exit 0
    assert summary["read"] == len(lines)

    # every bad record dead-lettered exactly once, each record under the bound
    bad = [line for line in lines if isinstance(decode_event(line), DecodeError)]
    records = _dead_letters(kafka_brokers, "poison-dead", len(bad))
    assert all(len(r) <= 65_536 for r in records)
    docs = [orjson.loads(r) for r in records]
    positions = [d["position"] for d in docs]
    assert len(positions) == len(set(positions)) == len(bad) == summary["dead_lettered"]
    truncated = {d["sha256"]: d for d in docs if d.get("truncated")}
    for p in POISON[:2]:  # (the others fit)
        d = truncated[hashlib.sha256(p).hexdigest()]
        assert d["original_size"] == len(p) and d["reason"] == "too_large"
    assert not (tmp_path / "home" / "fallback").exists()

    # every valid event applied: the same keys as a replay of the same lines from a file
    src = tmp_path / "same.jsonl"
    src.write_bytes(b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines))
    ref_url = f"{redis_url}?db=7"
    ref = redis.Redis.from_url(ref_url)
    ref.flushdb()
    nextbest_cli("replay", str(src), "--json", env={**env, "NEXTBEST_REDIS_URL": ref_url,
                 "NEXTBEST_METRICS_PORT": "0"}, timeout=300)  # fmt: skip
    a, b = dump(ref), dump(client)
    assert a == b, differences(a, b)


def test_an_event_from_the_far_future_is_dead_lettered_not_applied(
    kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    """One event dated 2066 (a bit flip in the year) would carry the watermark 40 years ahead
    and expire every profile: it is dead-lettered as `future_timestamp` instead."""
    t0 = 1_767_225_600_000
    events = [orjson.dumps({"event_id": f"f{i}", "type": "page_view", "ts": t0 + i * 60_000,
                            "customer_id": f"f{i % 30}"}) for i in range(300)]  # fmt: skip
    bogus = b'{"event_id":"x","type":"page_view","ts":"2066-01-01T00:00:00Z","customer_id":"f1"}'
    lines = [*events[:150], bogus, *events[150:], *sentinel_lines(t0 + 10**6, 1)]
    ensure_topics(kafka_brokers, ["future-in", "future-dead"], 1)
    produce(kafka_brokers, "future-in", lines)
    url = f"{redis_url}?db=9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    log = tmp_path / "run.log"
    env = {"NEXTBEST_KAFKA_BROKERS": kafka_brokers, "NEXTBEST_TOPIC_CLICKSTREAM": "future-in",
           "NEXTBEST_TOPIC_TRANSACTIONS": "future-in", "NEXTBEST_TOPIC_DEAD_LETTER": "future-dead",
           "NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path / "home"),
           "NEXTBEST_METRICS_PORT": "0"}  # fmt: skip
    proc = start_run(env, log)
    wait_sentinels(client, 1, log)
    summary = stop_run(proc, log)
    assert summary["dead_lettered_by_reason"] == {"future_timestamp": 1}
    assert summary["dropped_by_retention"] == 0
    assert all(int(client.hget(f"nb:{{c:f{c}}}:profile", "ne") or 0) == 10 for c in range(30))
    [dead] = _dead_letters(kafka_brokers, "future-dead", 1)
    assert orjson.loads(dead)["reason"] == "future_timestamp"

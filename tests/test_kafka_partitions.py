"""Partitions added while `nextbest run` runs, against a real Apache Kafka broker.

The session's embedded broker (tansu) has no CreatePartitions, so these tests start a real
one-node Kafka (``tests/realkafka.py``). ``REAL_KAFKA_BROKERS=host:port`` runs them against a
broker already running instead. Where Maven's repository is out of reach (no network to it) they
are skipped, saying so; any other failure to fetch or start Kafka fails them.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from dataflows.records import RawRecord
from dataflows.sources import KafkaTopicsSource, topic_layout
from nextbest.runtime import ensure_topics, free_port
from tests.chaos import produce, sentinel_lines, start_run, stop_run, wait_read, wait_sentinels
from tests.realkafka import KafkaUnavailable, kafka_broker, missing_tools, resolve_jars

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01
CUSTOMERS = 40


@pytest.fixture(scope="module")
def real_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real Apache Kafka broker for this module."""
    external = os.environ.get("REAL_KAFKA_BROKERS")
    if external:
        yield external
        return
    missing = missing_tools()
    if missing:
        pytest.skip(f"a real Kafka broker needs {' and '.join(missing)} on PATH")
    t0 = time.perf_counter()
    try:
        jars = resolve_jars()
    except KafkaUnavailable as exc:
        pytest.skip(str(exc).splitlines()[0])
    t1 = time.perf_counter()
    with kafka_broker(jars, tmp_path_factory.mktemp("kafka")) as address:
        print(f"real kafka: jars in {t1 - t0:.1f} s, broker up in {time.perf_counter() - t1:.1f} s")
        yield address


def _events(start: int, n: int) -> list[bytes]:
    return [
        orjson.dumps({"event_id": f"g{i}", "type": "page_view", "ts": T0 + i * 1000,
                      "customer_id": f"k{i % CUSTOMERS}"})
        for i in range(start, start + n)
    ]  # fmt: skip


def _add_partitions(brokers: str, topic: str, total: int) -> None:
    from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": brokers})
    for fut in admin.create_partitions([NewPartitions(topic, total)], request_timeout=30).values():
        fut.result()


def test_partitions_added_while_running_are_read_and_no_event_is_lost(
    real_kafka: str, redis_url: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, dead = f"grow-in-{suffix}", f"grow-dead-{suffix}"
    ensure_topics(real_kafka, [topic], 2)
    ensure_topics(real_kafka, [dead], 1)
    first, second = _events(0, 2000), _events(2000, 2000)
    produce(real_kafka, topic, first, partitions=2)

    url = f"{redis_url}?db=10"
    client: redis.Redis = redis.Redis.from_url(url)
    client.flushdb()
    port = free_port()
    log = tmp_path / "run.log"
    env = {"NEXTBEST_KAFKA_BROKERS": real_kafka, "NEXTBEST_TOPIC_CLICKSTREAM": topic,
           "NEXTBEST_TOPIC_TRANSACTIONS": topic, "NEXTBEST_TOPIC_DEAD_LETTER": dead,
           "NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path / "home"),
           "NEXTBEST_METRICS_PORT": str(port),
           "NEXTBEST_RECOVERY_DIR": str(tmp_path / "recovery"),
           "NEXTBEST_SNAPSHOT_INTERVAL": "1", "NEXTBEST_ALLOWED_LATENESS": "365d",
           "NEXTBEST_TOPIC_CHECK_INTERVAL": "1s"}  # fmt: skip
    proc = start_run(env, log)
    try:
        wait_read(port, len(first), log, timeout=120)
        _add_partitions(real_kafka, topic, 4)
        last_ts = T0 + 3999 * 1000
        produce(real_kafka, topic, [*second, *sentinel_lines(last_ts, 4)], partitions=4)
        wait_sentinels(client, 4, log, timeout=180)
        summary = stop_run(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    text = log.read_text()
    counts = {c: int(client.hget(f"nb:{{c:k{c}}}:profile", "ne") or 0) for c in range(CUSTOMERS)}
    client.close()
    wrong = {c: n for c, n in counts.items() if n != 100}
    assert not wrong, f"events per customer != 100: {wrong}\n{text[-5000:]}"
    assert f"topic {topic} grew from 2 to 4 partitions" in text, text[-5000:]
    consuming = re.findall(r"^nextbest run: consuming .*$", text, re.M)
    assert len(consuming) >= 2 and f"{topic} (4 partitions)" in consuming[-1], consuming
    assert f"{topic} (2 partitions)" in consuming[0], consuming
    assert summary["read"] >= len(first) + len(second) + 4


def _read(part: object, want: int, timeout: float = 15) -> list[RawRecord]:
    out: list[RawRecord] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out.extend(part.next_batch())  # type: ignore[attr-defined]
    return out


def test_a_position_beyond_the_end_of_a_real_partition_is_reset(real_kafka: str) -> None:
    """A real broker's high watermark is exact: a position past it is outside the partition
    (read from its start, the policy here), a position at it is the next record to come."""
    topic = f"beyond-{uuid.uuid4().hex[:8]}"
    ensure_topics(real_kafka, [topic], 1)
    for i in range(5):
        produce(real_kafka, topic, [b'{"n":%d}' % i])
    layout = topic_layout(real_kafka, [topic])
    source = KafkaTopicsSource(real_kafka, layout, offset_reset="earliest")

    beyond = source.build_part("read", f"0-{topic}", (10_000, layout[topic][1]))
    assert [r.data for r in _read(beyond, 5)] == [b'{"n":%d}' % i for i in range(5)]
    beyond.close()

    at_end = source.build_part("read", f"0-{topic}", (5, layout[topic][1]))
    assert _read(at_end, 1, timeout=2) == []
    produce(real_kafka, topic, [b'{"n":5}'])
    assert [r.data for r in _read(at_end, 1)] == [b'{"n":5}']
    at_end.close()

"""Partitions added while `nextbest run` runs, against a second Kafka-protocol broker.

The session's embedded broker (tansu 0.6) has no CreatePartitions, so this module starts
``noida-db`` (a pip-installed single binary that speaks the Kafka protocol and can add
partitions; a dev dependency) with only its Kafka service. ``REAL_KAFKA_BROKERS=host:port`` runs
the same tests against a broker already running instead (e.g. a real Apache Kafka).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import orjson
import pytest
import redis

from dataflows.records import RawRecord
from dataflows.sources import KafkaTopicsSource, topic_layout
from nextbest.runtime import ensure_topics, free_port, stop_process
from tests.chaos import produce, sentinel_lines, start_run, wait_sentinels
from tests.conftest import metric_sum

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01
CUSTOMERS = 40


def _start_noida(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """noida-db with only its Kafka service on a free port; its log in ``workdir``."""
    from confluent_kafka.admin import AdminClient

    binary = Path(str(files("noida_db").joinpath("noida-db")))
    binary.chmod(0o755)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "noida.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(binary), "start", "--data-dir", str(workdir / "data"), "--only", "kafka",
             "--kafka-port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "noida.log").read_text()
        try:
            AdminClient({"bootstrap.servers": address}).list_topics(timeout=1)
            return proc, address
        except Exception:
            time.sleep(0.2)
    stop_process(proc.pid)
    raise AssertionError(f"noida-db did not answer:\n{(workdir / 'noida.log').read_text()}")


@pytest.fixture(scope="module")
def real_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a broker that can add partitions, for this module."""
    external = os.environ.get("REAL_KAFKA_BROKERS")
    if external:
        yield external
        return
    proc, address = _start_noida(tmp_path_factory.mktemp("noida"))
    try:
        yield address
    finally:
        stop_process(proc.pid)


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


@pytest.mark.parametrize("processes", [1, 2])
def test_partitions_added_while_running_are_read_and_no_event_is_lost(
    real_kafka: str, redis_url: str, tmp_path: Path, processes: int
) -> None:
    """One process, or a cluster of two: each process's topic watch sees the new partitions and
    ends its share of the flow; the flow ends when every process's has, and every process starts
    it again over every partition (the two joining again as a cluster)."""
    suffix = uuid.uuid4().hex[:8]
    topic, dead = f"grow-in-{suffix}", f"grow-dead-{suffix}"
    ensure_topics(real_kafka, [topic], 2)
    ensure_topics(real_kafka, [dead], 1)
    first, second = _events(0, 2000), _events(2000, 2000)
    produce(real_kafka, topic, first, partitions=2)

    url = f"{redis_url}?db={10 + processes}"
    client: redis.Redis = redis.Redis.from_url(url)
    client.flushdb()
    ports = [free_port() for _ in range(processes)]
    logs = [tmp_path / f"run-{i}.log" for i in range(processes)]
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = []
    for i in range(processes):
        env = {"NEXTBEST_KAFKA_BROKERS": real_kafka, "NEXTBEST_TOPIC_CLICKSTREAM": topic,
               "NEXTBEST_TOPIC_TRANSACTIONS": topic, "NEXTBEST_TOPIC_DEAD_LETTER": dead,
               "NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path / f"home-{i}"),
               "NEXTBEST_METRICS_PORT": str(ports[i]),
               "NEXTBEST_RECOVERY_DIR": str(tmp_path / f"recovery-{i}"),
               "NEXTBEST_SNAPSHOT_INTERVAL": "1", "NEXTBEST_ALLOWED_LATENESS": "365d",
               "NEXTBEST_TOPIC_CHECK_INTERVAL": "1s",
               "NEXTBEST_IDENTITY_SALT": "grow-partitions-salt"}  # fmt: skip
        if processes > 1:
            env |= {"NEXTBEST_PROCESS_ID": str(i), "NEXTBEST_ADDRESSES": addresses}
        procs.append(start_run(env, logs[i]))
    try:
        read = 0.0
        deadline = time.monotonic() + 120
        while read < len(first):
            assert time.monotonic() < deadline, logs[0].read_text()[-5000:]
            time.sleep(0.2)
            read = sum(metric_sum(p, "nextbest_events_read_total") for p in ports)
        _add_partitions(real_kafka, topic, 4)
        last_ts = T0 + 3999 * 1000
        produce(real_kafka, topic, [*second, *sentinel_lines(last_ts, 4)], partitions=4)
        wait_sentinels(client, 4, logs[0], timeout=180)
        for p in procs:  # (what Kubernetes does: SIGTERM to every pod)
            p.send_signal(signal.SIGTERM)
        for p, log in zip(procs, logs, strict=True):
            assert p.wait(90) == 0, log.read_text()[-5000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    texts = [log.read_text() for log in logs]
    counts = {c: int(client.hget(f"nb:{{c:k{c}}}:profile", "ne") or 0) for c in range(CUSTOMERS)}
    client.close()
    wrong = {c: n for c, n in counts.items() if n != 100}
    assert not wrong, f"events per customer != 100: {wrong}\n{texts[0][-5000:]}"
    for text in texts:
        assert f"topic {topic} grew from 2 to 4 partitions" in text, text[-5000:]
        consuming = re.findall(r"^nextbest run(?: as process \d of 2)?: consuming .*$", text, re.M)
        assert len(consuming) >= 2 and f"{topic} (4 partitions)" in consuming[-1], consuming
        assert f"{topic} (2 partitions)" in consuming[0], consuming
    summaries = [orjson.loads(text.strip().splitlines()[-1]) for text in texts]
    assert sum(s["read"] for s in summaries) >= len(first) + len(second) + 4


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

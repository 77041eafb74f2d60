"""Chaos suite: `nextbest run` against a real broker and real Redis servers that misbehave.

Every scenario consumes the same topic as one uninterrupted reference run and must end with the
same Redis keys (the timing-dependent publications excepted: RFM boundaries, model checkpoints,
the projection marker). One topic with one partition: every run sees the events in the same
order, whatever its speed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from nextbest.runtime import ensure_topics, free_port, start_redis, stop_redis
from tests.chaos import (
    consume_all,
    differences,
    dump,
    produce,
    sentinel_lines,
    start_run,
    stop_run,
    wait_for,
    wait_read,
    wait_sentinels,
    wait_up,
)
from tests.conftest import metric_sum

pytestmark = pytest.mark.slow

TOPIC = "chaos-all"


@dataclass
class Reference:
    records: list[bytes]  # the topic, sentinel included
    keys: dict[bytes, Any]
    env: dict[str, str]  # the environment of every run but NEXTBEST_REDIS_URL, HOME, ports
    transitions: list[tuple[str, str]]  # (customer, transition id), in topic order


@pytest.fixture(scope="module")
def reference(
    kafka_brokers: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    """The topic (a simulated history with 1 % malformed lines) and its uninterrupted run."""
    from nextbest.simulator import SimConfig, generate
    from schemas import Event, decode_event

    lines = list(generate(SimConfig(customers=600, days=20, seed=11, bad_rate=0.01)))
    last_ts = max(e.ts for e in map(decode_event, lines) if isinstance(e, Event))
    ensure_topics(kafka_brokers, [TOPIC, "chaos-dead", "chaos-segments-ref"], 1)
    produce(kafka_brokers, TOPIC, [*lines, *sentinel_lines(last_ts, 1)])
    env = {
        "NEXTBEST_KAFKA_BROKERS": kafka_brokers,
        "NEXTBEST_TOPIC_CLICKSTREAM": TOPIC,
        "NEXTBEST_TOPIC_TRANSACTIONS": TOPIC,
        "NEXTBEST_TOPIC_DEAD_LETTER": "chaos-dead",
        "NEXTBEST_TOPIC_SEGMENT_EVENTS": "chaos-segments-ref",
        "NEXTBEST_ALLOWED_LATENESS": "365d",
    }
    tmp = tmp_path_factory.mktemp("chaos-reference")
    url = f"{redis_url}?db=4"
    client = redis.Redis.from_url(url)
    client.flushdb()
    log = tmp / "run.log"
    run_env = {**env, "NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp / "home"),
               "NEXTBEST_METRICS_PORT": "0"}  # fmt: skip
    proc = start_run(run_env, log)
    wait_sentinels(client, 1, log)
    summary = stop_run(proc, log)
    assert summary["read"] == len(lines) + 1
    keys = dump(client)
    assert len(keys) > 600
    transitions = _transitions(kafka_brokers, "chaos-segments-ref")
    assert len(transitions) > 100 and len(set(transitions)) == len(transitions)
    return Reference(lines + sentinel_lines(last_ts, 1), keys, env, transitions)


def _transitions(brokers: str, topic: str) -> list[tuple[str, str]]:
    """(customer, transition id) of every record on a segment-events topic, in topic order."""
    import orjson

    return [(d["customer_id"], d["transition_id"])
            for d in map(orjson.loads, consume_all(brokers, topic))]  # fmt: skip


def _first_seen_by_customer(records: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for customer, tid in records:
        if tid not in seen:
            seen.add(tid)
            out.setdefault(customer, []).append(tid)
    return out


def _assert_same(ref: Reference, client: redis.Redis) -> None:
    got = dump(client)
    assert got.keys() == ref.keys.keys() and got == ref.keys, differences(ref.keys, got)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A redis-server of the test's own (to kill or pause), without persistence."""
    workdir = tmp_path / "redis"
    proc, url = start_redis(workdir, persist=False)
    try:
        yield url, workdir
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            stop_redis(url, proc.pid)


def _run_on(
    reference: Reference, url: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`nextbest run` over the reference topic into ``url``: the process, its metrics port, log."""
    port = free_port()
    log = tmp_path / "run.log"
    env = {**reference.env, "NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path / "home"),
           "NEXTBEST_METRICS_PORT": str(port)}  # fmt: skip
    return start_run(env, log), port, log


def _pid_of(workdir: Path) -> int:
    """The pid of the redis-server serving ``workdir``'s socket (from the server itself)."""
    client = redis.Redis.from_url(f"unix://{workdir / 'redis.sock'}")
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _wait_caught_up(port: int, log: Path, timeout: float = 120) -> None:
    """Wait until the run's read count holds still for half a second (it read what is there)."""
    seen: list[float] = []

    def still() -> bool:
        seen.append(metric_sum(port, "nextbest_events_read_total"))
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

    wait_for(still, "the run to read what is there", log, timeout)


def test_several_sigkills_give_the_uninterrupted_result(
    reference: Reference, kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL `run` three times at random points while the stream arrives (a recovery
    directory, 1-s snapshots): the same keys as the uninterrupted run."""
    url = f"{redis_url}?db=5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    rng = random.Random(8)
    log = tmp_path / "run.log"
    topic = "chaos-kill"  # the same records in the same order as the reference's topic
    ensure_topics(kafka_brokers, [topic, "chaos-segments-kill"], 1)
    env = {**reference.env, "NEXTBEST_TOPIC_CLICKSTREAM": topic,
           "NEXTBEST_TOPIC_TRANSACTIONS": topic, "NEXTBEST_REDIS_URL": url,
           "NEXTBEST_TOPIC_SEGMENT_EVENTS": "chaos-segments-kill",
           "NEXTBEST_HOME": str(tmp_path / "home"),
           "NEXTBEST_RECOVERY_DIR": str(tmp_path / "recovery"),
           "NEXTBEST_SNAPSHOT_INTERVAL": "1"}  # fmt: skip
    records = reference.records
    cuts = sorted(rng.sample(range(len(records) // 10, len(records)), 3))
    chunks = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]
    produce(kafka_brokers, topic, chunks[0])
    for chunk in chunks[1:]:
        port = free_port()
        proc = start_run({**env, "NEXTBEST_METRICS_PORT": str(port)}, log)
        # (after a resume there may be nothing left to read until the next chunk comes)
        wait_up(port, log)
        _wait_caught_up(port, log)  # (on a loaded machine the reading can take seconds)
        time.sleep(1.2 + rng.random() / 2)  # at least one snapshot after it
        produce(kafka_brokers, topic, chunk)
        time.sleep(rng.random() / 3)  # then somewhere in the middle of the new records
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert metric_sum(port, "nextbest_events_read_total") == 0.0  # really gone
    proc = start_run({**env, "NEXTBEST_METRICS_PORT": "0"}, log)
    wait_sentinels(client, 1, log)
    resumed = stop_run(proc, log)
    assert 0 < resumed["read"] < len(records)  # it resumed from a snapshot
    _assert_same(reference, client)
    # every segment transition at least once; a repeat only with the same id (around a resume);
    # per customer the same sequence once the repeats are dropped
    got = _transitions(kafka_brokers, "chaos-segments-kill")
    assert set(got) == set(reference.transitions)
    assert _first_seen_by_customer(got) == _first_seen_by_customer(reference.transitions)


def test_redis_restarted_empty_is_healed(
    reference: Reference, own_redis: tuple[str, Path], tmp_path: Path
) -> None:
    """Redis dies mid-stream and comes back empty: the flow stalls, then re-projects every key
    from its state; the result equals the uninterrupted run."""
    url, workdir = own_redis
    client = redis.Redis.from_url(url)
    proc, port, log = _run_on(reference, url, tmp_path)
    wait_read(port, len(reference.records) // 3, log)
    os.kill(_pid_of(workdir), signal.SIGKILL)
    time.sleep(2)  # writes fail meanwhile: the sink stalls, nothing is lost
    assert proc.poll() is None, log.read_text()[-3000:]
    for f in workdir.glob("*.rdb"):
        f.unlink()
    restarted, url2 = start_redis(workdir, persist=False)
    assert url2 == url
    try:
        wait_sentinels(client, 1, log)
        wait_for(lambda: metric_sum(port, "nextbest_redis_reprojections_total") >= 1,
                 "a re-projection", log)  # fmt: skip
        wait_for(lambda: dump(client) == reference.keys, "the healed keys", log, 60)
        # the RFM owner re-published its boundaries (before the end of the run would)
        wait_for(lambda: bool(client.exists("nb:rfm:boundaries")), "the RFM boundaries", log, 10)
        assert metric_sum(port, "nextbest_sink_write_failures_total") > 0
        stop_run(proc, log)
        _assert_same(reference, client)
        assert "Redis lost data" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_redis(url, restarted.pid)


def test_redis_back_from_an_older_snapshot_is_healed(
    reference: Reference, own_redis: tuple[str, Path], tmp_path: Path
) -> None:
    """Redis comes back with only some of the writes it acknowledged (restarted from a snapshot
    taken mid-stream: what a failover to a replica behind, or an AOF missing its last second,
    also leaves). Its projection marker is there (in the snapshot), so only the write sequence
    tells: the flow, quiet by then, notices and re-projects; the result equals the reference."""
    import shutil

    url, workdir = own_redis
    client = redis.Redis.from_url(url)
    proc, port, log = _run_on(reference, url, tmp_path)
    restarted = None
    try:
        wait_read(port, len(reference.records) // 3, log)
        wait_for(lambda: any(k.startswith(b"nb:projection:seq:") for k in client.scan_iter()),
                 "a write sequence key", log)  # fmt: skip
        client.save()
        snapshot = shutil.copy(workdir / "dump.rdb", tmp_path / "mid-stream.rdb")
        wait_sentinels(client, 1, log)  # (the sentinel, last on the topic, is not in the snapshot)
        os.kill(_pid_of(workdir), signal.SIGKILL)
        shutil.copy(snapshot, workdir / "dump.rdb")
        restarted, url2 = start_redis(workdir, persist=False)
        assert url2 == url
        assert client.exists("nb:projection") and not client.exists("nb:{c:zz-sentinel-0}:profile")
        try:
            wait_for(lambda: dump(client) == reference.keys, "the healed keys", log, 60)
        except AssertionError:
            raise AssertionError(differences(reference.keys, dump(client))) from None
        assert metric_sum(port, "nextbest_redis_reprojections_total") == 1
        stop_run(proc, log)
        _assert_same(reference, client)
        assert "writes Redis had acknowledged are gone" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if restarted is not None:
            stop_redis(url, restarted.pid)


def test_redis_paused_for_30_s_is_survived(
    reference: Reference, own_redis: tuple[str, Path], tmp_path: Path
) -> None:
    """Redis frozen (SIGSTOP) for 30 s mid-stream: no crash, the stall shows in the metrics,
    every pending change is written afterwards."""
    url, workdir = own_redis
    client = redis.Redis.from_url(url)
    proc, port, log = _run_on(reference, url, tmp_path)
    wait_read(port, len(reference.records) // 3, log)
    pid = _pid_of(workdir)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: metric_sum(port, 'nextbest_sink_stalled{sink="redis"}') == 1,
                 "the stall gauge", log, 25)  # fmt: skip
        read_during = metric_sum(port, "nextbest_events_read_total")
        time.sleep(30 - 15)
        # back-pressure: the stalled worker does not read on
        assert metric_sum(port, "nextbest_events_read_total") == read_during
        time.sleep(12)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert proc.poll() is None, log.read_text()[-3000:]
    wait_sentinels(client, 1, log)
    wait_for(lambda: metric_sum(port, 'nextbest_sink_stalled{sink="redis"}') == 0,
             "the end of the stall", log)  # fmt: skip
    stop_run(proc, log)
    _assert_same(reference, client)


def test_sigterm_while_redis_is_away_exits_with_a_clear_message(
    reference: Reference, own_redis: tuple[str, Path], tmp_path: Path
) -> None:
    """A stalled run asked to stop gives up cleanly (exit 1, one line why), no traceback."""
    url, workdir = own_redis
    proc, port, log = _run_on(reference, url, tmp_path)
    wait_read(port, 1, log)
    pid = _pid_of(workdir)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: metric_sum(port, 'nextbest_sink_stalled{sink="redis"}') == 1,
                 "the stall gauge", log, 25)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    text = log.read_text()
    assert "stopping while writes fail" in text and "Traceback" not in text

"""`nextbest run` as a Bytewax cluster of two processes gives what one process gives.

A simulated history (with malformed lines) goes to one 4-partition topic, keyed by person as a
site's collector would, and is consumed by one `run` process and by two `run` processes that form
one cluster (each with its own recovery directory, home and metrics port; on the shop, writing
to a Redis Cluster of three masters). Every Redis key, every
dead letter and every segment transition must be the same, apart from the publications that
depend on wall-clock time or on how many changes a step saw between two publications, named in
:func:`tests.chaos.dump` (RFM boundaries, model checkpoints between the first and the last, the
projection marker), the transitions' ``emitted_at`` and the dead letters' ``rejected_at_ms``.

The stream is produced *live*: at a steady pace, in event-time order over all partitions, while
both runs consume, as a site's events come. Then the partitions of a run are read in step (a few
seconds of wall time apart at most), well within the allowed lateness, which is what the flow's
guarantees rest on. (A backlog read from several partitions at once is another matter: one
partition can run days of event time ahead of another, and what is then behind the watermark
depends on timing, with one process as with two: README, "Scaling out".)
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer

from features.redis_conn import cluster_url, connect
from nextbest.runtime import ensure_topics, free_port
from schemas import DecodeError, decode_event
from tests.chaos import (
    consume_all,
    differences,
    dump,
    sentinel_lines,
    start_run,
    wait_for,
    wait_sentinels,
    wait_up,
)
from tests.conftest import metric_sum
from tests.redis_cluster import running_cluster

pytestmark = pytest.mark.slow

PARTITIONS = 4
SALT = "scale-out-test-salt-0123456789"


def _person_of(lines: list[bytes]) -> dict[str, str]:
    """Each device's person: the customer it first logged in or signed up as."""
    owner: dict[str, str] = {}
    for line in lines:
        e = decode_event(line)
        if not isinstance(e, DecodeError) and e.anonymous_id and e.customer_id:
            owner.setdefault(e.anonymous_id, e.customer_id)
    return owner


def _without_shared_devices(lines: list[bytes]) -> list[bytes]:
    """The lines without the devices on which two customers logged in: their events between the
    two logins go to whoever the identity step had linked the device to when they arrived, which
    depends on how the partitions (one per person) interleave (README, "Scaling out")."""
    owners: dict[str, set[str]] = defaultdict(set)
    decoded = [decode_event(x) for x in lines]
    for e in decoded:
        if not isinstance(e, DecodeError) and e.anonymous_id and e.customer_id:
            owners[e.anonymous_id].add(e.customer_id)
    shared = {a for a, o in owners.items() if len(o) > 1}
    return [x for x, e in zip(lines, decoded, strict=True)
            if isinstance(e, DecodeError) or e.anonymous_id not in shared]  # fmt: skip


def _partition(line: bytes, owner: dict[str, str]) -> int:
    """The partition of a line: by person, as a collector that knows the person would key it
    (a person's events are then read in order)."""
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(d, dict):
        return 0
    anon = d.get("anonymous_id")
    key = d.get("customer_id") or (owner.get(anon, anon) if isinstance(anon, str) else None)
    return zlib.crc32(str(key or "").encode()) % PARTITIONS


class History:
    """A simulated history for a new 4-partition topic, produced live by :meth:`produce`."""

    def __init__(self, brokers: str, scenario: str, customers: int, days: int) -> None:
        from nextbest.simulator import SimConfig, generate

        cfg = SimConfig(customers=customers, days=days, seed=11, bad_rate=0.005,
                        scenario=scenario)  # fmt: skip
        self.brokers = brokers
        self.lines = _without_shared_devices(list(generate(cfg)))
        decoded = [decode_event(x) for x in self.lines]
        self.times = [None if isinstance(e, DecodeError) else e.ts for e in decoded]
        self.last_ts = max(t for t in self.times if t is not None)
        self.topic = f"scale-{scenario}-{uuid.uuid4().hex[:8]}"
        self.count = len(self.lines) + PARTITIONS
        ensure_topics(brokers, [self.topic], PARTITIONS)

    def _send(self, p: Producer, line: bytes, partition: int) -> None:
        while True:
            try:
                p.produce(self.topic, value=line, partition=partition)
                return
            except BufferError:
                p.poll(0.1)

    def produce_backlog(self, start: int, end: int | None, sentinels: bool) -> None:
        """Lines ``start:end`` at once (by person), then the sentinels if asked."""
        owner = _person_of(self.lines)
        p = Producer({"bootstrap.servers": self.brokers, "linger.ms": 5})
        for line in self.lines[start:end]:
            self._send(p, line, _partition(line, owner))
        if sentinels:
            for part, line in enumerate(sentinel_lines(self.last_ts, PARTITIONS)):
                p.produce(self.topic, value=line, partition=part)
        assert p.flush(30) == 0

    def produce(self, seconds: float) -> None:
        """Every line, by person, ``seconds`` of wall time for the whole event-time span (a
        malformed line goes with the line before it), then one sentinel per partition."""
        owner = _person_of(self.lines)
        first = min(t for t in self.times if t is not None)
        span = max(self.last_ts - first, 1)
        p = Producer({"bootstrap.servers": self.brokers, "linger.ms": 5})
        start = time.monotonic()
        for line, ts in zip(self.lines, self.times, strict=True):
            if ts is not None:
                delay = start + (ts - first) / span * seconds - time.monotonic()
                if delay > 0.005:
                    p.poll(0)
                    time.sleep(delay)
            self._send(p, line, _partition(line, owner))
        for part, line in enumerate(sentinel_lines(self.last_ts, PARTITIONS)):
            p.produce(self.topic, value=line, partition=part)
        assert p.flush(30) == 0


class Run:
    """One `run` of ``processes`` processes over the history's topic into Redis ``url``."""

    def __init__(
        self, history: History, url: str, name: str, tmp: Path, processes: int, lateness: str
    ) -> None:
        self.history, self.url, self.name = history, url, name
        self.tmp, self.lateness = tmp, lateness
        topic, brokers = history.topic, history.brokers
        self.dead, self.segments = f"{topic}-dead-{name}", f"{topic}-segments-{name}"
        ensure_topics(brokers, [self.dead, self.segments], 1)
        connect(url).flushdb()
        self.addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        self.processes = processes
        #: events behind the clock, over the processes, when every line was read
        self.behind = -1.0
        self.start()

    def start(self) -> None:
        """Start every process (again: the same settings, so a restart resumes)."""
        history, name, tmp, lateness = self.history, self.name, self.tmp, self.lateness
        topic, brokers, url, addresses = history.topic, history.brokers, self.url, self.addresses
        processes = self.processes
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.ports: list[int] = []
        for i in range(processes):
            home = tmp / f"{name}-{i}"
            env = {
                "NEXTBEST_KAFKA_BROKERS": brokers,
                "NEXTBEST_TOPIC_CLICKSTREAM": topic,
                "NEXTBEST_TOPIC_TRANSACTIONS": topic,
                "NEXTBEST_TOPIC_DECISIONS": topic,
                "NEXTBEST_TOPIC_DEAD_LETTER": self.dead,
                "NEXTBEST_TOPIC_SEGMENT_EVENTS": self.segments,
                "NEXTBEST_REDIS_URL": url,
                "NEXTBEST_IDENTITY_SALT": SALT,
                "NEXTBEST_ALLOWED_LATENESS": lateness,
                "NEXTBEST_CHURN_HORIZON_DAYS": "30",
                "NEXTBEST_SNAPSHOT_INTERVAL": "1",
                "NEXTBEST_HOME": str(home / "home"),
                "NEXTBEST_RECOVERY_DIR": str(home / "recovery"),
                "NEXTBEST_METRICS_PORT": str(free_port()),
            }
            if processes > 1:
                env |= {"NEXTBEST_PROCESS_ID": str(i), "NEXTBEST_ADDRESSES": addresses}
            self.logs.append(tmp / f"{name}-{i}.log")  # (appended to on a restart)
            self.procs.append(start_run(env, self.logs[-1]))
            self.ports.append(int(env["NEXTBEST_METRICS_PORT"]))

    def wait_up(self) -> None:
        for port, log in zip(self.ports, self.logs, strict=True):
            wait_up(port, log)

    def finish(self, reads: int | None = None) -> list[dict[str, Any]]:
        """Wait until every sentinel is applied and the processes read ``reads`` lines (default:
        the history), stop every process (each exits 0); the processes' summaries."""
        client = connect(self.url)
        lines = self.history.count if reads is None else reads
        try:
            wait_sentinels(client, PARTITIONS, self.logs[0], timeout=240)

            def read() -> float:
                return sum(metric_sum(p, "nextbest_events_read_total") for p in self.ports)

            wait_for(lambda: read() >= lines, f"{lines} reads", self.logs[0])
            self.behind = sum(
                metric_sum(p, "nextbest_events_behind_clock_total") for p in self.ports
            )
            for p in self.procs:
                p.send_signal(signal.SIGTERM)
            for p, log in zip(self.procs, self.logs, strict=True):
                assert p.wait(120) == 0, log.read_text()[-5000:]
            return [orjson.loads(log.read_text().strip().splitlines()[-1]) for log in self.logs]
        finally:
            self.kill()
            client.close()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def outputs(self) -> tuple[list[Any], dict[str, list[Any]]]:
        """The dead letters (by position, without ``rejected_at_ms``) and each customer's
        segment transitions in order (without ``emitted_at``)."""
        dead = []
        for v in consume_all(self.history.brokers, self.dead, quiet=3):
            d = orjson.loads(v)
            d.pop("rejected_at_ms")
            dead.append(d)
        dead.sort(key=lambda d: str(d["position"]))
        per_customer: dict[str, list[Any]] = defaultdict(list)
        for v in consume_all(self.history.brokers, self.segments, quiet=3):
            d = orjson.loads(v)
            d.pop("emitted_at")
            per_customer[d["customer_id"]].append(d)
        return dead, per_customer

    def recovery_parts(self, tmp: Path) -> list[list[str]]:
        return [sorted(p.name for p in (tmp / f"{self.name}-{i}" / "recovery").glob("part-*"))
                for i in range(len(self.procs))]  # fmt: skip


def _both(
    history: History, redis_url: str, tmp: Path, lateness: str, seconds: float,
    two_url: str | None = None,
) -> tuple[Run, Run, list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """One process and two processes over the history, produced live while both consume (the
    two into ``two_url`` if given, else into another database of the same server)."""
    one = Run(history, f"{redis_url}?db=2", "one", tmp, 1, lateness)
    two = Run(history, two_url or f"{redis_url}?db=3", "two", tmp, 2, lateness)
    try:
        one.wait_up()
        two.wait_up()
        producer = threading.Thread(target=history.produce, args=(seconds,))
        producer.start()
        producer.join()
        return one, two, one.finish(), two.finish()
    finally:
        one.kill()
        two.kill()


def _models(client: redis.Redis) -> dict[bytes, Any]:
    """The published models (their final checkpoints, written when the input ends)."""
    return {k: client.get(k) for k in client.scan_iter(match="nb:{model:*", count=1000)}


def test_two_processes_give_what_one_gives_every_key_transition_and_model(
    kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    """Purchase-only histories (a customer's events come by one path): every Redis key, every
    dead letter, every segment transition and the models the single owners learned, with a
    lateness under which labels mature, idle snapshots and flips by time happen."""
    history = History(kafka_brokers, "purchases", 3000, 120)
    one, two, s1, s2 = _both(history, redis_url, tmp_path, "30d", seconds=50)

    # each process read its share of the partitions, and together all of it; the premise: no
    # event came behind the clock (the partitions were read within the lateness of each other)
    assert s1[0]["read"] == history.count == sum(s["read"] for s in s2)
    assert one.behind == two.behind == 0, "partitions read too far apart: machine overloaded?"
    assert all(s["read"] > 0 for s in s2), s2
    ra, rb = redis.Redis.from_url(one.url), redis.Redis.from_url(two.url)
    a, b = dump(ra), dump(rb)
    assert len(a) > 3000
    assert a == b, differences(a, b)
    ma, mb = _models(ra), _models(rb)
    assert ma and ma == mb, sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
    (dead_one, seg_one), (dead_two, seg_two) = one.outputs(), two.outputs()
    assert dead_one and dead_one == dead_two
    assert sum(map(len, seg_one.values())) > 1000 and seg_one == seg_two
    # each process made and kept its own recovery partition
    assert two.recovery_parts(tmp_path) == [["part-0.sqlite3"], ["part-1.sqlite3"]]


def test_two_processes_on_a_redis_cluster_give_what_one_gives_on_a_shop(
    kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    """The shop (anonymous visitors, logins on several devices, baskets, product knowledge), the
    two processes writing to a Redis Cluster of three masters (``redis+cluster://``), the one
    process to one server: every Redis key but the segment memberships, and every dead letter.
    A customer's events reach the profile by two paths here (directly, and through the identity
    step for a device's anonymous events and its logins); segment transitions are decided on
    arrival, and the order in which the two paths arrive is not defined, in one process as in
    two (README, "Scaling out"): the memberships' times differ by seconds to minutes of event
    time (measured: e.g. ``browsing_not_buying`` entered at the fifth product view *in arrival
    order*)."""
    history = History(kafka_brokers, "shop", 300, 60)

    def kept(d: dict[bytes, Any]) -> dict[bytes, Any]:
        return {k: v for k, v in d.items()
                if not k.endswith(b":segments") and not k.startswith(b"nb:{seg:")}  # fmt: skip

    with running_cluster(tmp_path / "redis-cluster") as cluster:
        url = cluster_url(cluster.url)
        one, two, _, s2 = _both(history, redis_url, tmp_path, "60d", seconds=20, two_url=url)
        b = kept(dump(connect(url)))
        # spread over every master
        assert all(cluster.node(i).dbsize() > 100 for i in range(3))
    assert sum(s["read"] for s in s2) == history.count
    assert one.behind == two.behind == 0, "partitions read too far apart: machine overloaded?"
    a = kept(dump(redis.Redis.from_url(one.url)))
    assert sum(k.endswith(b":product") for k in a) > 500
    assert sum(k.startswith(b"nb:{a:") for k in a) > 100  # devices, linked and anonymous
    assert a == b, differences(a, b)
    dead_one, _ = one.outputs()
    dead_two, _ = two.outputs()
    assert dead_one and dead_one == dead_two


def test_two_processes_killed_and_resumed_give_what_one_gives(
    kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    """Both processes SIGKILLed after a snapshot, more input produced meanwhile, both started
    again: each resumes from its own recovery partition, and the result is what one process
    that never stopped gives (Redis writes are absolute; what was re-sent after the resume is
    the same records again: the transitions are compared by their ids, the dead letters by
    position)."""
    history = History(kafka_brokers, "purchases", 2000, 120)
    half = len(history.lines) // 2
    history.produce_backlog(0, half, sentinels=False)
    one = Run(history, f"{redis_url}?db=2", "one", tmp_path, 1, "365d")
    two = Run(history, f"{redis_url}?db=3", "two", tmp_path, 2, "365d")
    try:
        wait_for(lambda: sum(metric_sum(p, "nextbest_events_read_total") for p in two.ports)
                 >= half, "the first half", two.logs[0])  # fmt: skip
        time.sleep(2.5)  # a snapshot or two (NEXTBEST_SNAPSHOT_INTERVAL=1)
        two.kill()
        history.produce_backlog(half, None, sentinels=True)
        two.start()
        one.finish()
        resumed = two.finish(reads=0)
    finally:
        one.kill()
        two.kill()
    # the restarted processes went on from their snapshots' offsets, not from the start
    assert 0 < sum(s["read"] for s in resumed) < history.count - half // 2, resumed
    a, b = dump(redis.Redis.from_url(one.url)), dump(redis.Redis.from_url(two.url))
    assert len(a) > 2000
    assert a == b, differences(a, b)
    (dead_one, seg_one), (dead_two, seg_two) = one.outputs(), two.outputs()

    def unique_dead(dead: list[Any]) -> list[Any]:
        return list({orjson.dumps(d, option=orjson.OPT_SORT_KEYS): d for d in dead}.values())

    def unique_transitions(seg: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {c: list({t["transition_id"]: t for t in ts}.values()) for c, ts in seg.items()}

    assert dead_one and unique_dead(dead_one) == unique_dead(dead_two)
    assert seg_one and unique_transitions(seg_one) == unique_transitions(seg_two)
    assert two.recovery_parts(tmp_path) == [["part-0.sqlite3"], ["part-1.sqlite3"]]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEXTBEST_PROCESS_ID": "0"}, "NEXTBEST_ADDRESSES: required with NEXTBEST_PROCESS_ID"),
        ({"NEXTBEST_ADDRESSES": "a:1,b:1"}, "NEXTBEST_PROCESS_ID: required with NEXTBEST_ADDRE"),
        ({"NEXTBEST_PROCESS_ID": "2", "NEXTBEST_ADDRESSES": "a:1,b:1",
          "NEXTBEST_IDENTITY_SALT": SALT}, "NEXTBEST_PROCESS_ID: 2 is not below the 2 processes"),
        ({"NEXTBEST_PROCESS_ID": "0", "NEXTBEST_ADDRESSES": "a:1,b:1"},
         "NEXTBEST_IDENTITY_SALT: required when several processes run"),
        ({"NEXTBEST_PROCESS_ID": "0", "NEXTBEST_ADDRESSES": "a:1,a:1",
          "NEXTBEST_IDENTITY_SALT": SALT}, "NEXTBEST_ADDRESSES: an address appears twice"),
        ({"NEXTBEST_ADDRESSES": "localhost"}, "NEXTBEST_ADDRESSES: expected host:port"),
        ({"NEXTBEST_WORKERS_PER_PROCESS": "0"}, "NEXTBEST_WORKERS_PER_PROCESS: expected an int"),
    ],
)  # fmt: skip
def test_a_cluster_setting_that_makes_no_cluster_stops_run_at_start(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    from tests.conftest import nextbest_cli

    done = nextbest_cli("run", env={"NEXTBEST_HOME": str(tmp_path), **env}, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "redis").exists()  # stopped before starting any service


def test_replay_in_a_dataflow_pod_ignores_the_cluster_settings(
    redis_url: str, tmp_path: Path
) -> None:
    """A dataflow pod has the cluster settings; `nextbest replay` run there (kubectl exec) must
    not try to join the pods' cluster: only `run` forms one."""
    from tests.conftest import nextbest_cli

    src = tmp_path / "few.jsonl"
    src.write_bytes(b"".join(
        orjson.dumps({"event_id": f"r{i}", "type": "page_view", "ts": 1_767_225_600_000 + i,
                      "customer_id": f"r{i % 3}"}) + b"\n" for i in range(30)
    ))  # fmt: skip
    url = f"{redis_url}?db=4"
    redis.Redis.from_url(url).flushdb()
    env = {"NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path / "home"),
           "NEXTBEST_METRICS_PORT": "0", "NEXTBEST_PROCESS_ID": "1",
           "NEXTBEST_ADDRESSES": "127.0.0.1:1,127.0.0.1:2"}  # fmt: skip
    done = nextbest_cli("replay", str(src), "--json", env=env, timeout=120)
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["read"] == 30
    assert redis.Redis.from_url(url).exists("nb:{c:r1}:profile")

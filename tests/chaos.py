"""Helpers of the chaos tests: produce to the real broker, run `nextbest run`, dump Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from confluent_kafka import Producer

from tests.conftest import REPO, metric_sum


def produce(
    brokers: str,
    topic: str,
    lines: list[bytes],
    partitions: int | None = None,
    max_bytes: int = 1_000_000,
) -> None:
    """Produce lines to a topic, keyed by customer (or to partition ``i % partitions``)."""
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "message.max.bytes": max_bytes})
    for i, line in enumerate(lines):
        try:
            d = orjson.loads(line)
            assert isinstance(d, dict)
        except (orjson.JSONDecodeError, AssertionError):
            d = {}
        key = str(d.get("customer_id") or d.get("anonymous_id") or "").encode()
        kwargs: dict[str, Any] = {} if partitions is None else {"partition": i % partitions}
        while True:
            try:
                p.produce(topic, key=key, value=line, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0


def sentinel_lines(last_ts: int, partitions: int) -> list[bytes]:
    """One event per partition after every other event: when all are in Redis, all was read."""
    return [
        orjson.dumps({"event_id": f"zz-sentinel-{p}", "type": "page_view",
                      "ts": last_ts + 60_000, "customer_id": f"zz-sentinel-{p}"})
        for p in range(partitions)
    ]  # fmt: skip


def start_run(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`nextbest run --json --quiet` in a subprocess, output appended to ``log``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    full.update(env)
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "nextbest", "run", "--json", "--quiet"],
            env=full, stdout=fh, stderr=fh, cwd=REPO,
        )  # fmt: skip


def wait_for(check: Callable[[], bool], what: str, log: Path, timeout: float = 120) -> None:
    """Poll ``check`` until it holds; fail with the run's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-5000:]}")


def wait_sentinels(client: redis.Redis, partitions: int, log: Path, timeout: float = 120) -> None:
    """Wait until every partition's sentinel profile is in Redis."""
    keys = [f"nb:{{c:zz-sentinel-{p}}}:profile" for p in range(partitions)]
    wait_for(lambda: all(client.exists(k) for k in keys), "the sentinels", log, timeout)


def wait_read(port: int, n: float, log: Path, timeout: float = 60) -> None:
    """Wait until the run's metrics say it read at least ``n`` records."""
    wait_for(lambda: metric_sum(port, "nextbest_events_read_total") >= n, f"{n} reads", log,
             timeout)  # fmt: skip


def wait_up(port: int, log: Path, timeout: float = 60) -> None:
    """Wait until the run serves its metrics (it has started; it may have nothing to read)."""

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, "the run's metrics endpoint", log, timeout)


def dump(client: redis.Redis) -> dict[bytes, Any]:
    """Every key but the timing-dependent publications (RFM boundaries, model checkpoints and
    the projection markers): these are written every N changes or T seconds. A Redis Cluster
    client's ``scan_iter`` walks every master."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        if key == b"nb:rfm:boundaries" or key.startswith(
            (b"nb:{model:", b"nb:{projection:", b"nb:projection")
        ):
            continue
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":  # a segment's membership index
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":  # a customer's linked devices
            out[key] = sorted(client.smembers(key))
        else:
            out[key] = client.get(key)
    return out


def consume_all(brokers: str, topic: str, quiet: float = 5.0, timeout: float = 90) -> list[bytes]:
    """Every message value of a one-partition topic, from the start until nothing more comes for
    ``quiet`` seconds (the embedded broker's high watermark can lag the last batch)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"chaos-{time.time_ns()}",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg.value())
                last = time.monotonic()
        return out
    finally:
        consumer.close()


def differences(a: dict[bytes, Any], b: dict[bytes, Any]) -> list[Any]:
    """The keys that differ (missing on one side, or other values), with a few details."""
    out: list[Any] = [("only in reference", k) for k in a.keys() - b.keys()][:5]
    out += [("only in run", k) for k in b.keys() - a.keys()][:5]
    for k in a.keys() & b.keys():
        if a[k] != b[k] and len(out) < 15:
            if isinstance(a[k], dict) and isinstance(b[k], dict):
                fields = set(a[k]) | set(b[k])
                out.append((k, {f: (a[k].get(f), b[k].get(f)) for f in fields
                                if a[k].get(f) != b[k].get(f)}))  # fmt: skip
            elif _json_object(a[k]) is not None and _json_object(b[k]) is not None:
                x, y = _json_object(a[k]), _json_object(b[k])
                assert x is not None and y is not None
                out.append((k, {f: (x.get(f), y.get(f)) for f in set(x) | set(y)
                                if x.get(f) != y.get(f)}))  # fmt: skip
            else:
                out.append((k, a[k], b[k]))
    return out


def _json_object(raw: Any) -> dict[str, Any] | None:
    """A value that is a JSON object (a product's knowledge), decoded; else None."""
    if not isinstance(raw, bytes) or not raw.startswith(b"{"):
        return None
    try:
        got = json.loads(raw)
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


def stop_run(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """SIGTERM the run; it must exit 0; return its JSON summary."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, log.read_text()[-5000:]
    return json.loads(log.read_text().strip().splitlines()[-1])  # type: ignore[no-any-return]

"""(c) Event-to-Redis freshness at a fixed produce rate, against ``nextbest run``.

How it is measured:

* ``python -m nextbest run --json --quiet`` runs as a subprocess against the bench's broker and
  Redis; a warm-up event is produced (again every few seconds) until its profile shows up in Redis,
  so the measurement starts once the flow is consuming.
* Simulated events (good lines of the bench's file, ``ts`` rewritten to the produce time as live
  traffic would carry, so no event is late) are produced at a fixed rate in small batches with a
  ``confluent_kafka.Producer`` (a full queue is polled and retried, never dropped): ``purchase`` and
  ``refund`` to ``transactions``, everything else to ``clickstream``, keyed by the customer id, else
  the anonymous id. Each event's produce time is recorded just before ``produce``.
* A thread subscribed to Redis keyspace notifications (``notify-keyspace-events Kh``, pattern
  ``__keyspace@0__:nb:*``) takes each hash notification at time t for a profile key as the moment
  every produced-but-not-yet-visible event mapping to that key became visible. A customer event
  maps to ``nb:{c:<customer_id>}:profile``; an anonymous-only event to
  ``nb:{a:<anonymous_id>}:profile`` and, once the bench produces a ``login``/``signup`` linking
  that anonymous id to a customer, also to that customer's profile (identity stitching moves the
  anonymous history there, possibly in the same write batch, so that the anonymous profile is never
  written): the first notification on either key counts. This holds for the anonymous events
  produced after the link and for those before it that are not yet visible.

That rule can credit an event with an earlier event's write of the same key (when both were in
flight at once), which understates its latency. The ``isolated`` figures are therefore also given:
only events whose keys had no other event produced in the preceding ``isolation_gap_s`` (default
1 s) and whose previous event on those keys was already visible when they were produced, so the
first notification after their produce time must come from a write that includes them.

Before the flow starts, a transport baseline runs the same events at the same rate through the same
broker to plain consumers (:mod:`bench.kafka`); ``over_transport`` is the flow's p50/p99 divided by
the transport's, so what the broker alone costs is not mistaken for the flow's cost.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.full import BenchError, last_json_object, tail
from bench.kafka import BenchProducer, measure_transport, paced
from bench.services import REPO, Services, nextbest_command
from bench.stats import summary
from nextbest.runtime import ensure_topics
from schemas.events import TRANSACTION_TYPES, Event, decode_event

TOPIC_CLICKSTREAM = "clickstream"
TOPIC_TRANSACTIONS = "transactions"
TOPIC_DEAD_LETTER = "dead-letter"
TOPIC_SEGMENT_EVENTS = "segment-events"
KEYSPACE_PREFIX = b"__keyspace@0__:"
KEYSPACE_PATTERN = "__keyspace@0__:nb:*"
WARMUP_CUSTOMER = "bench-warmup"
PROBE_KEY = b"nb:{bench-probe}:profile"
LINK_TYPES = frozenset({"login", "signup"})


def customer_profile_key(customer_id: str) -> bytes:
    """Redis key of a customer's profile.

    >>> customer_profile_key("c-1")
    b'nb:{c:c-1}:profile'
    """
    return f"nb:{{c:{customer_id}}}:profile".encode()


def anonymous_profile_key(anonymous_id: str) -> bytes:
    """Redis key of an anonymous visitor's profile.

    >>> anonymous_profile_key("a-1")
    b'nb:{a:a-1}:profile'
    """
    return f"nb:{{a:{anonymous_id}}}:profile".encode()


@dataclass
class Planned:
    """One event to produce: its JSON document (``ts`` is set at produce time) and routing."""

    doc: dict[str, Any]
    topic: str
    kafka_key: bytes
    customer_id: str | None
    anonymous_id: str | None
    links: bool


def plan_events(path: Path, n: int) -> list[Planned]:
    """``n`` events from the good lines of ``path`` (cycled, with fresh event ids, if too few)."""
    out: list[Planned] = []
    for rnd in itertools.count():
        before = len(out)
        with path.open("rb") as fh:
            for raw in fh:
                if len(out) >= n:
                    return out
                ev = decode_event(raw.rstrip(b"\r\n"))
                if not isinstance(ev, Event):
                    continue
                doc = orjson.loads(raw)
                if rnd:
                    doc["event_id"] = f"{doc['event_id']}~r{rnd}"
                out.append(
                    Planned(
                        doc=doc,
                        topic=TOPIC_TRANSACTIONS
                        if ev.type in TRANSACTION_TYPES
                        else TOPIC_CLICKSTREAM,
                        kafka_key=(ev.customer_id or ev.anonymous_id or "").encode(),
                        customer_id=ev.customer_id,
                        anonymous_id=ev.anonymous_id,
                        links=ev.type in LINK_TYPES
                        and ev.customer_id is not None
                        and ev.anonymous_id is not None,
                    )
                )
        if len(out) == before:
            raise BenchError(f"no good events in {path}")
    return out  # pragma: no cover - itertools.count() never ends


@dataclass
class Tracker:
    """Produced events, their produce and visibility times, and the keys they wait on."""

    produced_at: list[float] = field(default_factory=list)
    visible_at: list[float | None] = field(default_factory=list)
    keys: list[tuple[bytes, ...]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    notifications: int = 0
    outstanding: int = 0
    _pending: dict[bytes, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def expect(self, keys: tuple[bytes, ...], kind: str, produced_at: float) -> int:
        """Register an event about to be produced; returns its index."""
        with self._lock:
            i = len(self.produced_at)
            self.produced_at.append(produced_at)
            self.visible_at.append(None)
            self.keys.append(keys)
            self.kinds.append(kind)
            self.outstanding += 1
            for key in keys:
                self._pending.setdefault(key, []).append(i)
            return i

    def alias(self, src: bytes, dst: bytes) -> None:
        """Events still waiting on ``src`` may also become visible through ``dst`` (a login moves
        an anonymous history into the customer's profile, possibly in the same write batch)."""
        with self._lock:
            for i in self._pending.get(src, ()):
                if self.visible_at[i] is None and dst not in self.keys[i]:
                    self.keys[i] = (*self.keys[i], dst)
                    self._pending.setdefault(dst, []).append(i)

    def notify(self, key: bytes, t: float) -> None:
        """A write to ``key`` was seen at ``t``: every pending event of that key is visible."""
        with self._lock:
            self.notifications += 1
            for i in self._pending.pop(key, ()):
                if self.visible_at[i] is None:
                    self.visible_at[i] = t
                    self.outstanding -= 1

    def visible(self, i: int) -> bool:
        """Whether event ``i`` has become visible."""
        return self.visible_at[i] is not None

    def latencies_ms(self, kinds: frozenset[str], start: int = 0) -> list[float]:
        """Visibility latencies of the events of ``kinds`` from index ``start`` on."""
        out = []
        for i in range(start, len(self.produced_at)):
            seen = self.visible_at[i]
            if seen is not None and self.kinds[i] in kinds:
                out.append((seen - self.produced_at[i]) * 1000.0)
        return out

    def isolated_latencies_ms(self, kinds: frozenset[str], start: int, gap: float) -> list[float]:
        """Latencies of the events that were alone in flight on their keys (see module doc)."""
        last: dict[bytes, int] = {}
        out = []
        for i in range(start, len(self.produced_at)):
            p = self.produced_at[i]
            clean = True
            for key in self.keys[i]:
                j = last.get(key)
                if j is not None:
                    seen_j = self.visible_at[j]
                    if p - self.produced_at[j] < gap or seen_j is None or seen_j >= p:
                        clean = False
                last[key] = i
            seen = self.visible_at[i]
            if clean and seen is not None and self.kinds[i] in kinds:
                out.append((seen - p) * 1000.0)
        return out


class KeyspaceListener:
    """A thread feeding Redis keyspace notifications of ``nb:*`` hashes to a :class:`Tracker`."""

    def __init__(self, url: str, tracker: Tracker) -> None:
        self._client: redis.Redis = redis.Redis.from_url(url)
        self._client.config_set("notify-keyspace-events", "Kh")
        pubsub = self._client.pubsub  # redis-py leaves pubsub() unannotated
        self._pubsub = pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe(KEYSPACE_PATTERN)
        self._tracker = tracker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keyspace-listener", daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        clock = time.perf_counter
        get = self._pubsub.get_message
        notify = self._tracker.notify
        cut = len(KEYSPACE_PREFIX)
        try:
            while not self._stop.is_set():
                msg = get(timeout=0.05)
                if msg is None or msg.get("type") != "pmessage":
                    continue
                t = clock()
                channel = msg["channel"]
                if isinstance(channel, bytes) and channel.endswith(b":profile"):
                    notify(channel[cut:], t)
        except BaseException as exc:  # reported by the bench, never lost silently
            self.error = exc

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the connections."""
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(redis.RedisError):
            self._pubsub.close()
        self._client.close()


def segment_event_records(brokers: str, settle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every record on ``segment-events``, in partition order (read until nothing new came for
    ``settle_s``)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"bench-{time.time_ns()}",
                         "enable.auto.commit": False})  # fmt: skip
    out: list[dict[str, Any]] = []
    try:
        meta = consumer.list_topics(TOPIC_SEGMENT_EVENTS, timeout=10).topics.get(
            TOPIC_SEGMENT_EVENTS
        )
        parts = list(meta.partitions) if meta is not None and meta.partitions else []
        consumer.assign([TopicPartition(TOPIC_SEGMENT_EVENTS, p, 0) for p in parts])
        last = time.monotonic()
        while parts and time.monotonic() - last < settle_s:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            last = time.monotonic()
            out.append(orjson.loads(msg.value() or b"{}"))
    finally:
        consumer.close()
    return out


def transition_latencies(brokers: str, produced: set[tuple[str, int]]) -> dict[str, Any]:
    """Event-to-transition latency: a transition caused by an event has ``at`` = that event's
    ``ts``, which the bench sets to its produce time (ms), so ``emitted_at - at`` is the time
    from producing the event to writing its transition (same machine, same clock). Transitions
    by time alone (a flip) are not caused by a measured event: counted, not timed."""
    from schemas.events import parse_ts

    lat: list[float] = []
    flips = 0
    for doc in segment_event_records(brokers):
        emitted = parse_ts(doc["emitted_at"])
        if (doc["customer_id"], doc["at_ms"]) in produced and emitted is not None:
            lat.append(float(emitted - doc["at_ms"]))
        else:
            flips += 1
    return {"event_driven_ms": summary(lat), "other": flips}


@contextlib.contextmanager
def _run_process(services: Services) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``nextbest run --json --quiet`` as a subprocess; SIGTERM (then SIGKILL) on exit."""
    home = services.workdir / "run-home"
    home.mkdir(parents=True, exist_ok=True)
    out_path = home / "run.stdout"
    with (home / "run.stdout").open("wb") as out, (home / "run.stderr").open("wb") as err:
        proc = subprocess.Popen(
            nextbest_command("run", "--json", "--quiet"),
            env=services.cli_env(home),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        yield proc, out_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _check_alive(proc: subprocess.Popen[bytes], home: Path) -> None:
    if proc.poll() is not None:
        err = (home / "run.stderr").read_text(errors="replace")
        raise BenchError(f"nextbest run exited with code {proc.returncode}:\n{tail(err)}")


def _wait_visible(
    tracker: Tracker, i: int, timeout: float, proc: subprocess.Popen[bytes] | None, home: Path
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tracker.visible(i):
            return True
        if proc is not None:
            _check_alive(proc, home)
        time.sleep(0.005)
    return tracker.visible(i)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _keys_of(ev: Planned, links: dict[str, str]) -> tuple[bytes, ...]:
    if ev.customer_id is not None:
        return (customer_profile_key(ev.customer_id),)
    anon = ev.anonymous_id or ""
    linked = links.get(anon)
    if linked is None:
        return (anonymous_profile_key(anon),)
    return (anonymous_profile_key(anon), customer_profile_key(linked))


def measure_freshness(
    services: Services,
    path: Path,
    *,
    rate: float = 2000.0,
    duration: float = 20.0,
    transport_duration: float = 10.0,
    tick: float = 0.005,
    linger_ms: float = 1.0,
    grace: float = 10.0,
    ready_timeout: float = 120.0,
    isolation_gap: float = 1.0,
) -> dict[str, Any]:
    """Produce ``rate`` events/s for ``duration`` s to a live ``nextbest run``; see the module doc.

    First, for ``transport_duration`` s, the same events go to separate topics read by plain
    consumers: the transport baseline (:func:`bench.kafka.measure_transport`).
    """
    total = max(1, round(rate * duration))
    planned = plan_events(path, total)
    n_transport = max(1, min(total, round(rate * transport_duration)))
    transport = measure_transport(
        services.brokers,
        [(ev.topic, ev.kafka_key, orjson.dumps(ev.doc)) for ev in planned[:n_transport]],
        {t: f"bench-transport-{t}" for t in (TOPIC_CLICKSTREAM, TOPIC_TRANSACTIONS)},
        rate=rate,
        tick=tick,
        linger_ms=linger_ms,
    )

    client = services.client()
    try:
        client.flushall()
    finally:
        client.close()
    ensure_topics(services.brokers, [TOPIC_CLICKSTREAM, TOPIC_TRANSACTIONS, TOPIC_DEAD_LETTER], 3)
    produced: set[tuple[str, int]] = set()  # (customer id, ts) of the measured events
    tracker = Tracker()
    listener = KeyspaceListener(services.redis_url, tracker)
    listener.start()
    try:
        _probe_notifications(services, tracker)
        producer = BenchProducer(services.brokers, linger_ms)
        t_start = time.perf_counter()
        with _run_process(services) as (proc, out_path):
            home = out_path.parent
            warmups = _warm_up(tracker, producer, proc, home, ready_timeout)
            ready_s = time.perf_counter() - t_start
            first = len(tracker.produced_at)
            links: dict[str, str] = {}

            def emit(i: int) -> None:
                ev = planned[i]
                ev.doc["ts"] = _now_ms()
                value = orjson.dumps(ev.doc)
                kind = "customer" if ev.customer_id is not None else "anonymous"
                if ev.links and ev.anonymous_id is not None and ev.customer_id is not None:
                    links[ev.anonymous_id] = ev.customer_id
                    tracker.alias(
                        anonymous_profile_key(ev.anonymous_id),
                        customer_profile_key(ev.customer_id),
                    )
                tracker.expect(_keys_of(ev, links), kind, time.perf_counter())
                if ev.customer_id is not None:
                    produced.add((ev.customer_id, ev.doc["ts"]))
                producer.produce(ev.topic, ev.kafka_key, value)

            def check() -> None:
                if proc.poll() is not None:
                    _check_alive(proc, home)

            produce_seconds = paced(total, rate, tick, emit, producer.poll, check)
            unsent = producer.flush(30)
            deadline = time.monotonic() + grace
            while tracker.outstanding > 0 and time.monotonic() < deadline:
                _check_alive(proc, home)
                time.sleep(0.01)
            if listener.error is not None:
                raise BenchError(f"keyspace listener failed: {listener.error!r}")
        run_summary = _read_summary(out_path)
    finally:
        listener.close()

    kinds_all = frozenset({"customer", "anonymous"})
    lat = tracker.latencies_ms(kinds_all, first)
    isolated = tracker.isolated_latencies_ms(kinds_all, first, isolation_gap)
    produced_by_kind = {
        k: sum(1 for x in tracker.kinds[first:] if x == k) for k in ("customer", "anonymous")
    }
    result: dict[str, Any] = {
        "rate_per_s": rate,
        "duration_s": duration,
        "produced": total,
        "produce_seconds": round(produce_seconds, 3),
        "achieved_rate_per_s": round(total / produce_seconds, 1) if produce_seconds > 0 else 0.0,
        "measured": len(lat),
        "unmeasured": total - len(lat),
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
        "latency_ms": summary(lat),
        "by_kind": {
            k: {
                "produced": produced_by_kind[k],
                **summary(tracker.latencies_ms(frozenset({k}), first)),
            }
            for k in ("customer", "anonymous")
        },
        "isolated": {"gap_s": isolation_gap, **summary(isolated)},
        "anonymous_events": (
            "mapped to nb:{a:<anonymous_id>}:profile and, from the login/signup linking it, "
            "also to the customer's profile (first notification wins)"
        ),
        "notifications": tracker.notifications,
        "run_ready_seconds": round(ready_s, 3),
        "warmup_events": warmups,
        "producer": {**producer.stats(), "batch_tick_ms": tick * 1000, "unflushed": unsent},
        "transport": transport,
        "run_summary": run_summary,
        "segment_transitions": transition_latencies(services.brokers, produced),
    }
    if lat:
        s = result["latency_ms"]
        result["p50_ms"], result["p99_ms"], result["max_ms"] = s["p50"], s["p99"], s["max"]
        t = transport["latency_ms"]
        if t.get("count"):
            result["over_transport"] = {
                "p50": round(s["p50"] / t["p50"], 2) if t["p50"] > 0 else None,
                "p99": round(s["p99"] / t["p99"], 2) if t["p99"] > 0 else None,
            }
    return result


def _probe_notifications(services: Services, tracker: Tracker) -> None:
    """Check that keyspace notifications reach the listener before relying on them."""
    client = services.client()
    try:
        i = tracker.expect((PROBE_KEY,), "probe", time.perf_counter())
        client.hset(PROBE_KEY, "probe", "1")
        ok = _wait_visible(tracker, i, 10.0, None, services.workdir)
        client.delete(PROBE_KEY)
    finally:
        client.close()
    if not ok:
        raise BenchError("Redis keyspace notifications did not arrive (notify-keyspace-events)")


def _warm_up(
    tracker: Tracker,
    producer: BenchProducer,
    proc: subprocess.Popen[bytes],
    home: Path,
    timeout: float,
) -> int:
    """Produce warm-up events until one is visible in Redis (the flow is then consuming)."""
    deadline = time.monotonic() + timeout
    key = customer_profile_key(WARMUP_CUSTOMER)
    for n in itertools.count(1):
        doc = {
            "event_id": f"bench-warmup-{n}",
            "type": "page_view",
            "ts": _now_ms(),
            "customer_id": WARMUP_CUSTOMER,
        }
        i = tracker.expect((key,), "warmup", time.perf_counter())
        producer.produce(TOPIC_CLICKSTREAM, WARMUP_CUSTOMER.encode(), orjson.dumps(doc))
        producer.flush(5)
        if _wait_visible(tracker, i, 5.0, proc, home):
            return n
        if time.monotonic() > deadline:
            break
    err = (home / "run.stderr").read_text(errors="replace")
    raise BenchError(f"nextbest run did not consume within {timeout:.0f} s:\n{tail(err)}")


def _read_summary(out_path: Path) -> dict[str, Any]:
    try:
        return last_json_object(out_path.read_text(errors="replace"))
    except BenchError as exc:
        return {"error": str(exc)}

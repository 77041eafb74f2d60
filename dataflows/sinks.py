"""Sinks: the Redis profile writer and the dead-letter outputs (JSONL file or Kafka topic).

Every sink follows one failure policy (:class:`Retrier`): a write that fails for a retriable
reason (Redis or the broker unreachable, Redis loading, read-only after a failover, out of
memory) is retried with exponential backoff until it succeeds, or until
``NEXTBEST_SINK_RETRY_LIMIT`` if one is set. Meanwhile the worker waits in the sink, so the
source is not read (back-pressure: nothing is read and dropped), ``nextbest_sink_stalled{sink}``
is 1 and each error kind is logged once per stall. A write that fails for a reason a retry cannot
fix (a record the broker refuses, an error reply) is counted, logged once per kind and written to
a local fallback file (``<NEXTBEST_HOME>/fallback/``); the flow goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows import metrics
from dataflows.records import (
    DEAD_LETTER_MAX_BYTES,
    DropProfile,
    Rejected,
    SinkOp,
    WriteBoundaries,
    WriteCheckpoint,
    WriteLink,
    WriteProfile,
    encode_dead_letter,
)
from dataflows.reproject import ProjectionGuard, Reprojection
from features.profile import to_fields
from features.store import Command, ProfileWriter
from schemas.keys import device_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkOptions:
    """The failure policy of the sinks (from settings)."""

    #: Give up (the flow stops with an error) after retrying this long; 0: never give up.
    retry_limit_ms: int = 0
    #: Where records that cannot be delivered for a non-retriable reason go.
    fallback_dir: Path = field(default_factory=lambda: Path(".nextbest") / "fallback")
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES
    #: Set when the process is asked to stop: a stalled sink then gives up instead of waiting.
    stop: threading.Event | None = None
    #: Seconds between two checks that Redis still holds the projection.
    check_interval_s: float = 1.0
    #: Longest pause between two retries.
    max_backoff_s: float = 5.0


class SinkGaveUp(RuntimeError):
    """A sink stopped retrying (retry limit reached, or the process is stopping)."""


class Retrier:
    """The retry policy of one sink partition: backoff from 50 ms to ``max_backoff_s``, the
    stall gauge, one warning per error kind per stall (and one a minute while it lasts), the
    ceiling and the stop request."""

    def __init__(self, sink: str, options: SinkOptions) -> None:
        self.sink = sink
        self.options = options
        self.since: float | None = None
        self.delay = 0.05
        self.kinds: set[str] = set()
        self.last_log = 0.0
        self.gauge = metrics.SINK_STALLED.labels(sink)
        self.gauge.set(0)

    def failed(self, kind: str, error: object, wait: bool = True) -> None:
        """One failed attempt: count, log, give up if due, else sleep before the next one."""
        now = time.monotonic()
        metrics.SINK_WRITE_FAILURES.labels(self.sink, kind).inc()
        if self.since is None:
            self.since = self.last_log = now
            self.gauge.set(1)
        stalled = now - self.since
        if kind not in self.kinds:
            self.kinds.add(kind)
            log.warning("%s sink: write failed (%s: %s); retrying, input is held",
                        self.sink, kind, error)  # fmt: skip
        elif now - self.last_log >= 60:
            self.last_log = now
            log.warning("%s sink: still failing after %.0f s (%s: %s)", self.sink, stalled,
                        kind, error)  # fmt: skip
        limit = self.options.retry_limit_ms / 1000
        if limit and stalled >= limit:
            raise SinkGaveUp(
                f"{self.sink} sink: gave up after {stalled:.0f} s of failed writes ({kind}: "
                f"{error}); NEXTBEST_SINK_RETRY_LIMIT is {limit:g} s"
            )
        stop = self.options.stop
        if stop is not None and stop.is_set():
            raise SinkGaveUp(
                f"{self.sink} sink: stopping while writes fail ({kind}: {error}); changes not "
                "written are written again after a restart from the recovery snapshot"
            )
        if wait:
            if stop is not None:
                stop.wait(self.delay)
            else:
                time.sleep(self.delay)
            self.delay = min(self.delay * 2, self.options.max_backoff_s)

    def succeeded(self) -> None:
        """The write went through: end the stall (logged with its length)."""
        if self.since is None:
            return
        log.warning("%s sink: writing again after %.1f s", self.sink,
                    time.monotonic() - self.since)  # fmt: skip
        self.since = None
        self.delay = 0.05
        self.kinds.clear()
        self.gauge.set(0)


class Fallback:
    """A local JSONL file for records a sink could not deliver for a non-retriable reason."""

    def __init__(self, sink: str, path: Path) -> None:
        self.sink = sink
        self.path = path
        self.logged: set[str] = set()

    def write(self, kind: str, error: object, doc: dict[str, Any]) -> None:
        """Count, log once per kind, append ``doc`` (with the error) to the file."""
        metrics.SINK_WRITE_FAILURES.labels(self.sink, kind).inc()
        metrics.SINK_FALLBACK.labels(self.sink).inc()
        if kind not in self.logged:
            self.logged.add(kind)
            log.error("%s sink: a record cannot be delivered (%s: %s); it goes to %s (logged "
                      "once per kind)", self.sink, kind, error, self.path)  # fmt: skip
        line = orjson.dumps({"sink": self.sink, "error_kind": kind, "error": str(error),
                             "at_ms": int(time.time() * 1000), **doc})  # fmt: skip
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(line + b"\n")
        except OSError as exc:
            log.error("%s sink: cannot write the fallback file %s: %s", self.sink, self.path, exc)


# ---------------------------------------------------------------------------------------------
# Redis

#: Error replies that a retry can fix: the server is loading, read-only after a failover, out
#: of memory, busy with a script, or its cluster is not ready.
_RETRIABLE_REPLIES = {
    "LOADING": "loading",
    "READONLY": "readonly",
    "OOM": "oom",
    "BUSY": "busy",
    "MASTERDOWN": "cluster",
    "TRYAGAIN": "cluster",
    "CLUSTERDOWN": "cluster",
    "NOREPLICAS": "cluster",
}


def redis_error_kind(exc: Exception) -> tuple[str, bool]:
    """(error kind, retriable) of a Redis failure; kinds are a finite set (metric labels).

    >>> redis_error_kind(redis.ConnectionError("refused"))
    ('connection', True)
    >>> redis_error_kind(redis.ResponseError("OOM command not allowed"))
    ('oom', True)
    >>> redis_error_kind(redis.ResponseError("WRONGTYPE Operation against a key"))
    ('other', False)
    """
    if isinstance(exc, redis.BusyLoadingError):
        return "loading", True
    if isinstance(exc, redis.TimeoutError):
        return "timeout", True
    if isinstance(exc, redis.ConnectionError):
        return "connection", True
    if isinstance(exc, redis.ReadOnlyError):
        return "readonly", True
    code = str(exc).split(" ", 1)[0]
    if code in _RETRIABLE_REPLIES:
        return _RETRIABLE_REPLIES[code], True
    return "other", False


def redis_client(url: str) -> redis.Redis:
    """A Redis client for the write path: timeouts, no retries of its own (the sink retries)."""
    client: redis.Redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    return client


def _target(op: SinkOp) -> str:
    """What an operation overwrites: a profile key (links share their device's key) or "rfm"."""
    if isinstance(op, WriteLink):
        return device_key(op.anonymous_id)
    if isinstance(op, WriteBoundaries):
        return "rfm"
    if isinstance(op, WriteCheckpoint):
        return "model:" + op.target
    return op.key


def _command_key(cmd: Command) -> str:
    """The first Redis key a command touches (for the fallback record)."""
    if cmd[0] == "EVALSHA":
        return str(cmd[3])
    return str(cmd[1])


class _Watch:
    """A thread that checks every ``interval`` seconds that Redis still holds the projection
    (independently of writes: a quiet flow notices a loss too)."""

    def __init__(self, url: str, guard: ProjectionGuard, interval: float) -> None:
        self._client = redis_client(url)
        self._guard = guard
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nextbest-redis-watch",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def check(self) -> bool:
        """One check now; False when Redis cannot be reached (the next one will tell)."""
        try:
            self._guard.check(self._client)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        except redis.ResponseError as exc:
            log.debug("projection check failed: %s", exc)
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._client.close()


class _RedisPartition(StatelessSinkPartition[SinkOp]):
    def __init__(self, url: str, options: SinkOptions, watch: _Watch | None) -> None:
        self._client = redis_client(url)
        self._writer = ProfileWriter(self._client)
        self._retrier = Retrier("redis", options)
        self._fallback = Fallback("redis", options.fallback_dir / "redis-failures.jsonl")
        self._watch = watch

    def write_batch(self, items: list[SinkOp]) -> None:
        # Keep only the last operation per target: values are absolute, so the last one wins.
        last: dict[str, SinkOp] = {}
        for item in items:
            target = _target(item)
            last.pop(target, None)
            last[target] = item
        t0 = time.perf_counter()
        w = self._writer
        batch: list[Command] = []
        for op in last.values():
            if isinstance(op, WriteProfile):
                w.replace(batch, op.key, to_fields(op.state))
            elif isinstance(op, DropProfile):
                w.drop(batch, op.key)
            elif isinstance(op, WriteLink):
                w.link(batch, op.anonymous_id, op.customer_id)
            elif isinstance(op, WriteCheckpoint):
                w.checkpoint(batch, op.target, op.version, op.data)
            else:
                w.boundaries(batch, op.data)
        self._send(batch)
        metrics.REDIS_WRITE_SECONDS.observe(time.perf_counter() - t0)
        metrics.REDIS_BATCH_SIZE.observe(len(last))

    def _send(self, batch: list[Command]) -> None:
        """Send until every command is applied or, for a non-retriable error, in the fallback."""
        pending = batch
        while pending:
            try:
                failed = self._writer.send(pending)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                kind, _ = redis_error_kind(exc)
                metrics.REDIS_WRITE_FAILURES.labels(kind).inc()
                self._retrier.failed(kind, exc)
                continue
            pending = []
            last_error: tuple[str, Exception] | None = None
            for cmd, reply in failed:
                kind, retriable = redis_error_kind(reply)
                metrics.REDIS_WRITE_FAILURES.labels(kind).inc()
                if retriable:
                    pending.append(cmd)
                    last_error = (kind, reply)
                else:
                    self._fallback.write(kind, reply, {"key": _command_key(cmd),
                                                       "command": str(cmd[0])})  # fmt: skip
            if last_error is not None:
                self._retrier.failed(*last_error)
        if self._retrier.since is not None and self._watch is not None:
            self._watch.check()  # after an outage: did Redis come back empty?
        self._retrier.succeeded()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._client.close()


class RedisSink(DynamicSink[SinkOp]):
    """Applies each batch's sink operations in one pipeline: one command per changed key.

    It also watches for Redis losing its data and then asks the flow (through
    :attr:`reprojection`, which :func:`~dataflows.flow.build_flow` hands to the clocks) to
    write everything again (see :mod:`dataflows.reproject`); ``watch=False`` turns that off.
    """

    def __init__(self, url: str, options: SinkOptions | None = None, watch: bool = True) -> None:
        self._url = url
        self._options = SinkOptions() if options is None else options
        self.reprojection = Reprojection()
        self._guard = ProjectionGuard(self.reprojection) if watch else None

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        watch = None
        if self._guard is not None and worker_index == 0:
            watch = _Watch(self._url, self._guard, self._options.check_interval_s)
            watch.check()
            watch.start()
        return _RedisPartition(self._url, self._options, watch)


# ---------------------------------------------------------------------------------------------
# dead letters


class _FilePartition(StatelessSinkPartition[Rejected]):
    def __init__(self, path: Path, options: SinkOptions) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._max = options.dead_letter_max_bytes
        self._retrier = Retrier("dead_letter", options)

    def write_batch(self, items: list[Rejected]) -> None:
        data = b"".join(encode_dead_letter(r, self._max) + b"\n" for r in items)
        while data:
            try:
                written = os.write(self._fd, data)
            except OSError as exc:  # disk full, I/O error: hold the input until it clears
                self._retrier.failed("io", exc)
                continue
            data = data[written:]
        self._retrier.succeeded()

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


class DeadLetterFileSink(DynamicSink[Rejected]):
    """Appends dead-letter records as JSON lines to a file (one file per worker if several)."""

    def __init__(self, path: Path, options: SinkOptions | None = None) -> None:
        self.path = path
        self._options = SinkOptions() if options is None else options

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FilePartition:
        path = self.path
        if worker_count > 1:
            path = path.with_name(f"{path.stem}-{worker_index}{path.suffix}")
        return _FilePartition(path, self._options)


def kafka_error_kind(err: Any) -> str:
    """A librdkafka error as a metric label: its name, lower case (a finite set)."""
    try:
        return str(err.name()).strip("_").lower() or "unknown"
    except Exception:
        return "unknown"


class _KafkaPartition(StatelessSinkPartition[Rejected]):
    def __init__(
        self, brokers: str, topic: str, options: SinkOptions, config: Mapping[str, str]
    ) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                "bootstrap.servers": brokers,
                "linger.ms": 20,
                # report an undeliverable record within 30 s (then it is produced again)
                "message.timeout.ms": 30_000,
                **config,
            }
        )
        self._topic = topic
        self._max = options.dead_letter_max_bytes
        self._retrier = Retrier("dead_letter", options)
        self._fallback = Fallback("dead_letter", options.fallback_dir / "dead-letter.jsonl")
        self._failed: list[tuple[bytes, Any]] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append((msg.value(), err))

    def _produce(self, value: bytes) -> None:
        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(self._topic, value=value, on_delivery=self._on_delivery)
                return
            except BufferError:  # queue full (bytewax#522): serve callbacks, then retry
                metrics.DEAD_LETTER_WRITE_ERRORS.inc()
                self._producer.poll(0.1)
            except KafkaException as exc:  # refused before sending (e.g. too large)
                err = exc.args[0]
                if err.retriable():
                    self._retrier.failed(kafka_error_kind(err), err)
                    continue
                self._fallback.write(kafka_error_kind(err), err, {"record": orjson.Fragment(value)})
                return

    def write_batch(self, items: list[Rejected]) -> None:
        pending = [encode_dead_letter(r, self._max) for r in items]
        while pending:
            for value in pending:
                self._produce(value)
            while (left := self._producer.flush(5)) > 0:
                self._retrier.failed("undelivered", f"{left} records still queued", wait=False)
            failed, self._failed = self._failed, []
            pending = []
            for value, err in failed:
                if err.retriable() or kafka_error_kind(err) in ("msg_timed_out", "transport"):
                    pending.append(value)
                    self._retrier.failed(kafka_error_kind(err), err, wait=False)
                else:
                    self._fallback.write(
                        kafka_error_kind(err), err, {"record": orjson.Fragment(value)}
                    )
            if pending:
                self._retrier.failed("retry", f"{len(pending)} records to produce again")
        self._retrier.succeeded()

    def close(self) -> None:
        self._producer.flush(30)


class DeadLetterKafkaSink(DynamicSink[Rejected]):
    """Produces dead-letter records to a Kafka topic: bounded records, every error handled.

    ``config`` adds librdkafka producer properties (security settings, limits).
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        options: SinkOptions | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self._brokers = brokers
        self._topic = topic
        self._options = SinkOptions() if options is None else options
        self._config = dict(config or {})

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        return _KafkaPartition(self._brokers, self._topic, self._options, self._config)

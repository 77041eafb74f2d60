"""The Redis sink: applies the flow's sink operations (profiles, links, RFM boundaries, model
checkpoints) to Redis, and watches that Redis still holds the projection.

Every sink follows one failure policy, in :mod:`dataflows.retry` (retry with backoff while
holding the input, a fallback file for what a retry cannot fix); the dead-letter outputs (JSONL
file or Kafka topic) are in :mod:`dataflows.deadletters`. Both are re-exported here.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.exceptions import RedisClusterException

from dataflows import metrics
from dataflows.deadletters import DeadLetterFileSink, DeadLetterKafkaSink, kafka_error_kind
from dataflows.erasure import WriteStatus
from dataflows.records import (
    DropProfile,
    ExitSegment,
    IndexSegment,
    LinkDevice,
    SinkOp,
    WriteBoundaries,
    WriteCheckpoint,
    WriteConversion,
    WriteLink,
    WritePopular,
    WriteProduct,
    WriteProfile,
    WriteSegments,
)
from dataflows.reproject import (
    SWAP_SCRIPT,
    ProjectionGuard,
    Reprojection,
    WriteSequence,
    marker_keys,
)
from dataflows.retry import Fallback, Retrier, SinkGaveUp, SinkOptions
from decisions.store import ConversionWriter
from features.profile import to_fields
from features.redis_conn import connect
from features.store import Command, ProfileWriter
from schemas.erasure import STATUS_TTL_S, status_key
from schemas.keys import device_key

__all__ = [
    "DeadLetterFileSink",
    "DeadLetterKafkaSink",
    "Fallback",
    "RedisSink",
    "Retrier",
    "SinkGaveUp",
    "SinkOptions",
    "kafka_error_kind",
    "redis_client",
    "redis_error_kind",
]

log = logging.getLogger(__name__)


#: Error replies that a retry can fix: the server is loading, read-only after a failover, out
#: of memory, busy with a script, or its cluster is not ready or moving a slot (redirections
#: still unresolved after :func:`features.redis_conn.send_raw` followed a few).
_RETRIABLE_REPLIES = {
    "LOADING": "loading",
    "READONLY": "readonly",
    "OOM": "oom",
    "BUSY": "busy",
    "MASTERDOWN": "cluster",
    "TRYAGAIN": "cluster",
    "CLUSTERDOWN": "cluster",
    "NOREPLICAS": "cluster",
    "MOVED": "cluster",
    "ASK": "cluster",
}


def redis_error_kind(exc: Exception) -> tuple[str, bool]:
    """(error kind, retriable) of a Redis failure; kinds are a finite set (metric labels).

    >>> redis_error_kind(redis.ConnectionError("refused"))
    ('connection', True)
    >>> redis_error_kind(redis.ResponseError("OOM command not allowed"))
    ('oom', True)
    >>> redis_error_kind(redis.ResponseError("WRONGTYPE Operation against a key"))
    ('other', False)

    An error reply parsed by redis-py has its code in ``status_code`` (not in the message):

    >>> from redis._parsers.base import BaseParser
    >>> redis_error_kind(BaseParser.parse_error("CLUSTERDOWN The cluster is down"))
    ('cluster', True)
    """
    if isinstance(exc, redis.BusyLoadingError):
        return "loading", True
    if isinstance(exc, redis.TimeoutError):
        return "timeout", True
    if isinstance(exc, redis.ConnectionError):
        return "connection", True
    if isinstance(exc, redis.ReadOnlyError):
        return "readonly", True
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    if code in _RETRIABLE_REPLIES:
        return _RETRIABLE_REPLIES[code], True
    return "other", False


def redis_client(url: str) -> redis.Redis:
    """A Redis client for the write path (one server, or a Redis Cluster for a cluster URL):
    timeouts, no retries of its own (the sink retries)."""
    return connect(url, socket_timeout=10, socket_connect_timeout=5)


def _target(op: SinkOp) -> str:
    """What an operation overwrites: a profile key (links share their device's key) or "rfm"."""
    if isinstance(op, WriteLink):
        return device_key(op.anonymous_id)
    if isinstance(op, LinkDevice):  # (an addition: every one is kept)
        return f"devices:{op.customer_id}:{op.anonymous_id}"
    if isinstance(op, WriteBoundaries):
        return "rfm"
    if isinstance(op, WriteCheckpoint):
        return "model:" + op.target
    if isinstance(op, WriteSegments):
        return op.key + ":segments"
    if isinstance(op, IndexSegment):
        return f"seg:{op.segment}:{op.customer_id}"
    if isinstance(op, ExitSegment):
        return f"exit:{op.segment}:{op.customer_id}"
    if isinstance(op, WriteProduct):
        return "product:" + op.product_id
    if isinstance(op, WritePopular):
        return "popular"
    if isinstance(op, WriteConversion):  # a max, not a replacement: every one is kept
        return f"conversion:{op.key}:{op.action}:{op.ts}"
    if isinstance(op, WriteStatus):
        return "erasure:" + op.request_id
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
        except (redis.ResponseError, RedisClusterException) as exc:
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
    def __init__(
        self,
        url: str,
        options: SinkOptions,
        watch: _Watch | None,
        sequence: tuple[WriteSequence, ProjectionGuard] | None = None,
    ) -> None:
        self._client = redis_client(url)
        self._writer = ProfileWriter(self._client)
        self._conversions = ConversionWriter(self._writer)
        self._retrier = Retrier("redis", options)
        self._fallback = Fallback("redis", options.fallback_dir / "redis-failures.jsonl")
        self._watch = watch
        self._sequence = sequence
        self._swap_sha = self._writer.register(SWAP_SCRIPT)

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
            elif isinstance(op, LinkDevice):
                w.linked_device(batch, op.customer_id, op.anonymous_id)
            elif isinstance(op, WriteCheckpoint):
                w.checkpoint(batch, op.target, op.version, op.data)
            elif isinstance(op, WriteSegments):
                w.segments(batch, op.key, op.members)
            elif isinstance(op, IndexSegment):
                w.index(batch, op.segment, op.customer_id, op.since)
            elif isinstance(op, ExitSegment):
                w.exit(batch, op.segment, op.customer_id, op.at)
            elif isinstance(op, WriteProduct):
                w.product(batch, op.product_id, op.data)
            elif isinstance(op, WritePopular):
                w.popular(batch, op.lists)
            elif isinstance(op, WriteConversion):
                batch.append(self._conversions.command(op.key, op.action, op.ts, op.ttl_ms))
            elif isinstance(op, WriteStatus):
                w.status(batch, status_key(op.request_id), op.data, STATUS_TTL_S)
            else:
                w.boundaries(batch, op.data)
        self._send(batch)
        metrics.REDIS_WRITE_SECONDS.observe(time.perf_counter() - t0)
        metrics.REDIS_BATCH_SIZE.observe(len(last))

    def _swaps(self) -> list[Command]:
        """The batch's last commands: the write sequence's swap on every primary."""
        if self._sequence is None:
            return []
        seq = self._sequence[0]
        markers = marker_keys(self._client)
        value = seq.attempt(markers)
        return [("EVALSHA", self._swap_sha, 1, seq.key(m), value) for m in markers]

    def _replied(self, cmd: Command, reply: object) -> None:
        if self._sequence is None or cmd[0] != "EVALSHA" or cmd[1] != self._swap_sha:
            return
        seq, guard = self._sequence
        generation = guard.reprojection.generation
        why = seq.replied(str(cmd[3]), reply if isinstance(reply, bytes) else None, generation)
        if why is None:
            return
        with suppress(redis.RedisError, RedisClusterException):
            guard.check(self._client)  # emptied: the marker's own request (not a second one)
        if guard.reprojection.generation == generation:
            guard.reprojection.request(f"writes Redis had acknowledged are gone: {why}")

    def _send(self, batch: list[Command]) -> None:
        """Send until every command is applied or, for a non-retriable error, in the fallback."""
        pending = batch + self._swaps()
        while pending:
            try:
                failed = self._writer.send(pending, self._replied)
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
        sequence = None
        if self._guard is not None:
            sequence = (WriteSequence(f"{step_id}.{worker_index}"), self._guard)
            self._guard.sequences.append(sequence[0])
        return _RedisPartition(self._url, self._options, watch, sequence)

"""Sinks: the Redis profile writer and the dead-letter outputs (JSONL file or Kafka topic)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from dataflows import metrics
from dataflows.records import (
    DropProfile,
    Rejected,
    SinkOp,
    WriteBoundaries,
    WriteCheckpoint,
    WriteLink,
    WriteProfile,
    encode_dead_letter,
)
from features.profile import to_fields
from features.store import Command, ProfileWriter

log = logging.getLogger(__name__)


def redis_client(url: str, retries: int = 8) -> redis.Redis:
    """A Redis client with a retry policy (exponential backoff) for the write path."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=10,
    )
    return client


def _target(op: SinkOp) -> str:
    """What an operation overwrites: a profile key (links share their device's key) or "rfm"."""
    if isinstance(op, WriteLink):
        return "a:" + op.anonymous_id
    if isinstance(op, WriteBoundaries):
        return "rfm"
    if isinstance(op, WriteCheckpoint):
        return "model:" + op.target
    return op.key


class _RedisPartition(StatelessSinkPartition[SinkOp]):
    def __init__(self, url: str) -> None:
        self._client = redis_client(url)
        self._writer = ProfileWriter(self._client)

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
        w.execute(batch)
        metrics.REDIS_WRITE_SECONDS.observe(time.perf_counter() - t0)
        metrics.REDIS_BATCH_SIZE.observe(len(last))

    def close(self) -> None:
        self._client.close()


class RedisSink(DynamicSink[SinkOp]):
    """Applies each batch's sink operations in one pipeline: one command per changed key."""

    def __init__(self, url: str) -> None:
        self._url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self._url)


class _FilePartition(StatelessSinkPartition[Rejected]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_batch(self, items: list[Rejected]) -> None:
        data = b"".join(encode_dead_letter(r) + b"\n" for r in items)
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


class DeadLetterFileSink(DynamicSink[Rejected]):
    """Appends dead-letter records as JSON lines to a file (one file per worker if several)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FilePartition:
        path = self.path
        if worker_count > 1:
            path = path.with_name(f"{path.stem}-{worker_index}{path.suffix}")
        return _FilePartition(path)


class _KafkaPartition(StatelessSinkPartition[Rejected]):
    def __init__(self, brokers: str, topic: str) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20})
        self._topic = topic

    def write_batch(self, items: list[Rejected]) -> None:
        for rej in items:
            value = encode_dead_letter(rej)
            while True:
                try:
                    self._producer.produce(self._topic, value=value)
                    break
                except BufferError:  # queue full (bytewax#522): poll, then retry
                    metrics.DEAD_LETTER_WRITE_ERRORS.inc()
                    self._producer.poll(0.1)
        self._producer.poll(0)
        self._producer.flush(30)

    def close(self) -> None:
        self._producer.flush(30)


class DeadLetterKafkaSink(DynamicSink[Rejected]):
    """Produces dead-letter records to a Kafka topic, never dropping on a full queue."""

    def __init__(self, brokers: str, topic: str) -> None:
        self._brokers = brokers
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        return _KafkaPartition(self._brokers, self._topic)

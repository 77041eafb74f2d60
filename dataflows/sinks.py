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
from dataflows.records import Rejected, encode_dead_letter
from features.profile import ProfileState
from features.store import write_profiles

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


class _RedisProfilePartition(StatelessSinkPartition[tuple[str, ProfileState]]):
    def __init__(self, url: str) -> None:
        self._client = redis_client(url)

    def write_batch(self, items: list[tuple[str, ProfileState]]) -> None:
        # Keep only the newest state per key: values are absolute, so the last one wins.
        latest = {key: st for key, st in items}
        t0 = time.perf_counter()
        n = write_profiles(self._client, latest.values())
        metrics.REDIS_WRITE_SECONDS.observe(time.perf_counter() - t0)
        metrics.REDIS_BATCH_SIZE.observe(n)

    def close(self) -> None:
        self._client.close()


class RedisProfileSink(DynamicSink[tuple[str, ProfileState]]):
    """Writes each batch's newest profile states with one pipelined HSET each."""

    def __init__(self, url: str) -> None:
        self._url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisProfilePartition:
        return _RedisProfilePartition(self._url)


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

"""The record sinks — dead letters and segment transitions — to a JSONL file or a Kafka topic,
under the sinks' failure policy (:mod:`dataflows.retry`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows import metrics
from dataflows.records import Rejected, SegmentEvent, encode_dead_letter, encode_segment_event
from dataflows.retry import Fallback, Retrier, SinkOptions


def _dead_letter(options: SinkOptions) -> Callable[[Any], bytes]:
    return lambda r: encode_dead_letter(r, options.dead_letter_max_bytes)


def _segment_event(options: SinkOptions) -> Callable[[Any], bytes]:
    return lambda e: encode_segment_event(e)


T = TypeVar("T")


class _FilePartition(StatelessSinkPartition[Any]):
    def __init__(
        self, path: Path, options: SinkOptions, encode: Callable[[Any], bytes], name: str
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._encode = encode
        self._retrier = Retrier(name, options)

    def write_batch(self, items: list[Any]) -> None:
        data = b"".join(self._encode(r) + b"\n" for r in items)
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


class _JsonlSink(DynamicSink[T]):
    """Appends records as JSON lines to a file (one file per worker if several)."""

    _name = "records"
    _encoder = staticmethod(_dead_letter)

    def __init__(self, path: Path, options: SinkOptions | None = None) -> None:
        self.path = path
        self._options = SinkOptions() if options is None else options

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FilePartition:
        path = self.path
        if worker_count > 1:
            path = path.with_name(f"{path.stem}-{worker_index}{path.suffix}")
        return _FilePartition(path, self._options, self._encoder(self._options), self._name)


class DeadLetterFileSink(_JsonlSink[Rejected]):
    """Appends dead-letter records as JSON lines to a file (one file per worker if several)."""

    _name = "dead_letter"
    _encoder = staticmethod(_dead_letter)


class SegmentEventsFileSink(_JsonlSink[SegmentEvent]):
    """Appends segment transitions as JSON lines to a file (embedded mode)."""

    _name = "segment_events"
    _encoder = staticmethod(_segment_event)


def kafka_error_kind(err: Any) -> str:
    """A librdkafka error as a metric label: its name, lower case (a finite set)."""
    try:
        return str(err.name()).strip("_").lower() or "unknown"
    except Exception:
        return "unknown"


class _KafkaPartition(StatelessSinkPartition[Any]):
    def __init__(
        self,
        brokers: str,
        topic: str,
        options: SinkOptions,
        config: Mapping[str, str],
        encode: Callable[[Any], tuple[bytes | None, bytes]],
        name: str,
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
        self._encode = encode
        self._retrier = Retrier(name, options)
        self._fallback = Fallback(name, options.fallback_dir / f"{name.replace('_', '-')}.jsonl")
        self._failed: list[tuple[tuple[bytes | None, bytes], Any]] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(((msg.key(), msg.value()), err))

    def _produce(self, record: tuple[bytes | None, bytes]) -> None:
        from confluent_kafka import KafkaException

        key, value = record
        while True:
            try:
                self._producer.produce(self._topic, value=value, key=key,
                                       on_delivery=self._on_delivery)  # fmt: skip
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

    def write_batch(self, items: list[Any]) -> None:
        pending = [self._encode(r) for r in items]
        while pending:
            for value in pending:
                self._produce(value)
            while (left := self._producer.flush(5)) > 0:
                self._retrier.failed("undelivered", f"{left} records still queued", wait=False)
            failed, self._failed = self._failed, []
            pending = []
            for record, err in failed:
                if err.retriable() or kafka_error_kind(err) in ("msg_timed_out", "transport"):
                    pending.append(record)
                    self._retrier.failed(kafka_error_kind(err), err, wait=False)
                else:
                    self._fallback.write(
                        kafka_error_kind(err), err, {"record": orjson.Fragment(record[1])}
                    )
            if pending:
                self._retrier.failed("retry", f"{len(pending)} records to produce again")
        self._retrier.succeeded()

    def close(self) -> None:
        self._producer.flush(30)


class _KafkaSink(DynamicSink[T]):
    """Produces records to a Kafka topic, every error handled (``config``: more librdkafka
    producer properties: security settings, limits)."""

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
        raise NotImplementedError


class DeadLetterKafkaSink(_KafkaSink[Rejected]):
    """Produces dead-letter records to a Kafka topic: bounded records, every error handled.

    ``config`` adds librdkafka producer properties (security settings, limits).
    """

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        encode = _dead_letter(self._options)
        return _KafkaPartition(self._brokers, self._topic, self._options, self._config,
                               lambda r: (None, encode(r)), "dead_letter")  # fmt: skip


class SegmentEventsKafkaSink(_KafkaSink[SegmentEvent]):
    """Produces segment transitions to a Kafka topic, keyed by customer id (one customer's
    transitions stay in one partition, in order)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        return _KafkaPartition(self._brokers, self._topic, self._options, self._config,
                               lambda e: (e.customer_id.encode(), encode_segment_event(e)),
                               "segment_events")  # fmt: skip

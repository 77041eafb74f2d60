"""Kafka helpers of the freshness bench: a paced producer and the transport baseline.

The transport baseline measures what the broker alone costs: the same events, producer settings,
rate and pacing, consumed by plain ``confluent_kafka`` consumers configured as Bytewax's
``KafkaSource`` configures its own (one consumer per partition, librdkafka defaults otherwise,
``consume(batch, 0.001)`` in a loop). The flow's freshness is then read against it.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.full import BenchError
from bench.stats import summary

#: Header carrying the producer's ``perf_counter()`` (same process, same clock) for the baseline.
SENT_HEADER = "bench-sent"


class BenchProducer:
    """A ``confluent_kafka.Producer`` that never drops on a full queue (poll, then retry)."""

    def __init__(self, brokers: str, linger_ms: float) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {"bootstrap.servers": brokers, "linger.ms": linger_ms, "client.id": "nextbest-bench"}
        )
        self.linger_ms = linger_ms
        self.failures: list[str] = []
        self.buffer_full = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(str(err))

    def produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Produce one message; on ``BufferError`` poll and retry (bytewax#522)."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                self.buffer_full += 1
                self._producer.poll(0.05)

    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still queued."""
        remaining: int = self._producer.flush(timeout)
        return remaining

    def stats(self) -> dict[str, Any]:
        """Producer settings and trouble counters for the report."""
        return {
            "linger_ms": self.linger_ms,
            "buffer_full_retries": self.buffer_full,
            "delivery_failures": len(self.failures),
        }


def paced(
    total: int,
    rate: float,
    tick: float,
    emit: Callable[[int], None],
    poll: Callable[[], None],
    check: Callable[[], None] | None = None,
) -> float:
    """Call ``emit(i)`` for ``i`` in ``range(total)`` at ``rate`` per second, in batches every
    ``tick`` seconds (each batch emits what is due by then); returns the seconds it took."""
    t0 = time.perf_counter()
    next_tick = t0
    i = 0
    while i < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            emit(i)
            i += 1
        poll()
        if check is not None:
            check()
        next_tick += tick
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return time.perf_counter() - t0


class _Consumers:
    """One plain consumer per partition of ``topics``, polled round-robin in a thread."""

    def __init__(self, brokers: str, topics: Sequence[str], partitions: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._consumers: list[Any] = []
        for topic in topics:
            for part in range(partitions):
                consumer = Consumer(
                    {
                        "group.id": "nextbest-bench-transport",
                        "enable.auto.commit": "false",
                        "bootstrap.servers": brokers,
                        "enable.partition.eof": "false",
                        # the same fetch wait as the flow's Kafka source (dataflows/sources.py)
                        "fetch.wait.max.ms": "10",
                    }
                )
                consumer.assign([TopicPartition(topic, part, OFFSET_BEGINNING)])
                self._consumers.append(consumer)
        self.latencies_ms: list[float] = []
        self.received = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="transport-consumers", daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        clock = time.perf_counter
        try:
            while not self._stop.is_set():
                for consumer in self._consumers:
                    for msg in consumer.consume(1000, 0.001):
                        if msg.error() is not None:
                            continue
                        now = clock()
                        for name, value in msg.headers() or ():
                            if name == SENT_HEADER:
                                (sent,) = struct.unpack("<d", value)
                                with self._lock:
                                    self.latencies_ms.append((now - sent) * 1000.0)
                                    self.received += 1
        except BaseException as exc:  # reported by the bench, never lost silently
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> None:
        """Forget what was received so far (the warm-up)."""
        with self._lock:
            self.latencies_ms.clear()
            self.received = 0

    def latencies(self) -> list[float]:
        """A copy of the latencies received so far, in ms."""
        with self._lock:
            return list(self.latencies_ms)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for consumer in self._consumers:
            consumer.close()


def sent_header() -> list[tuple[str, str | bytes | None]]:
    """The send-time header of a transport-baseline message (``perf_counter()`` now)."""
    return [(SENT_HEADER, struct.pack("<d", time.perf_counter()))]


def measure_transport(
    brokers: str,
    messages: Sequence[tuple[str, bytes, bytes]],
    topic_map: dict[str, str],
    *,
    rate: float,
    tick: float,
    linger_ms: float,
    partitions: int = 3,
    ready_timeout: float = 60.0,
    grace: float = 10.0,
) -> dict[str, Any]:
    """Produce ``messages`` ``(topic, key, value)`` to their baseline topics (``topic_map``) at
    ``rate`` and measure produce-to-consume latency with plain consumers."""
    from nextbest.runtime import ensure_topics

    ensure_topics(brokers, sorted(set(topic_map.values())), partitions)
    consumers = _Consumers(brokers, sorted(set(topic_map.values())), partitions)
    consumers.start()
    producer = BenchProducer(brokers, linger_ms)
    try:
        # Warm up: the consumers are fetching once a first message comes through.
        deadline = time.monotonic() + ready_timeout
        first_topic = next(iter(topic_map.values()))
        while consumers.received == 0:
            producer.produce(first_topic, b"bench-warmup", b"{}", sent_header())
            producer.flush(5)
            wait_until = time.monotonic() + 3
            while consumers.received == 0 and time.monotonic() < wait_until:
                time.sleep(0.005)
            if time.monotonic() > deadline:
                raise BenchError(f"transport consumers got nothing within {ready_timeout:.0f} s")
        consumers.reset()

        def emit(i: int) -> None:
            topic, key, value = messages[i]
            producer.produce(topic_map[topic], key, value, sent_header())

        seconds = paced(len(messages), rate, tick, emit, producer.poll)
        producer.flush(30)
        deadline = time.monotonic() + grace
        while consumers.received < len(messages) and time.monotonic() < deadline:
            time.sleep(0.01)
        if consumers.error is not None:
            raise BenchError(f"transport consumers failed: {consumers.error!r}")
    finally:
        consumers.close()
    lat = consumers.latencies()
    return {
        "produced": len(messages),
        "consumed": len(lat),
        "achieved_rate_per_s": round(len(messages) / seconds, 1) if seconds > 0 else 0.0,
        "latency_ms": summary(lat),
        "consumer": "confluent_kafka.Consumer per partition, as bytewax KafkaSource configures it",
        "producer": producer.stats(),
    }

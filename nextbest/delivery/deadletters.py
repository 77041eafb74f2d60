"""Where delivery's dead-letter records go: a Kafka topic (keyed by customer) or a JSONL file.

A write returns only once the record is durable (acknowledged by the broker, or written and
fsynced), because the record's offset is committed right after it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("nextbest.deliver")


class FileDeadLetters:
    """Appends dead-letter records as JSON lines to ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, key: bytes | None, value: bytes, stop: threading.Event) -> bool:
        data = value + b"\n"
        while True:
            try:
                written = os.write(self._fd, data)
                data = data[written:]
                if not data:
                    os.fsync(self._fd)
                    return True
            except OSError as exc:  # disk full, I/O error: retry until it clears or a stop
                log.error("dead-letter file %s: %s; retrying", self.path, exc)
                if stop.wait(1.0):
                    return False

    def close(self) -> None:
        os.close(self._fd)


class KafkaDeadLetters:
    """Produces dead-letter records to a topic and waits for the broker's acknowledgement."""

    def __init__(self, brokers: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": brokers,
                "client.id": "nextbest-deliver",
                "enable.idempotence": False,
                "acks": "all",
                "message.timeout.ms": 30_000,
            }
        )

    def write(self, key: bytes | None, value: bytes, stop: threading.Event) -> bool:
        from confluent_kafka import KafkaException

        outcome: list[Any] = []

        def on_delivery(err: Any, msg: Any) -> None:
            outcome.append(err)

        while True:
            outcome.clear()
            try:
                self._producer.produce(self.topic, key=key, value=value, on_delivery=on_delivery)
            except BufferError:
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                err = exc.args[0]
                log.error("dead-letter topic %s: %s; retrying", self.topic, err)
                if stop.wait(1.0):
                    return False
                continue
            while not outcome:
                self._producer.poll(0.1)
                if stop.is_set() and not outcome:
                    # keep waiting a bounded time for the acknowledgement of a sent record
                    self._producer.flush(5)
                    if not outcome:
                        return False
            if outcome[0] is None:
                return True
            log.error("dead-letter topic %s: %s; retrying", self.topic, outcome[0])
            if stop.wait(1.0):
                return False

    def close(self) -> None:
        self._producer.flush(10)

"""Where served decisions are logged: a JSONL file (embedded mode) or a Kafka topic.

Every answered next-best-action request writes one :class:`schemas.decisions.DecisionRecord`
(:func:`schemas.decisions.encode_decision`). Writing never fails a request: a record that cannot
be written is counted (``nextbest_decision_log_failures_total``) and logged.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> log = JsonlDecisionLog(d / "decisions.jsonl")
>>> log.write("c:1", b'{"decision_id":"d1"}'); log.close()
True
>>> (d / "decisions.jsonl").read_text()
'{"decision_id":"d1"}\\n'
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class DecisionLog(Protocol):
    """A destination of decision records."""

    def write(self, key: str, record: bytes) -> bool:
        """Write one record (keyed by profile key); ``False`` when it could not be."""
        ...

    def close(self) -> None:
        """Flush and release."""
        ...


class JsonlDecisionLog:
    """Appends one line per record to a file (created with its directory), flushed per write
    so a reader (the dataflow, ``evaluate-policy``) sees every served decision."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = path.open("ab")
        self._lock = threading.Lock()

    def write(self, key: str, record: bytes) -> bool:
        try:
            with self._lock:
                self._fh.write(record + b"\n")
                self._fh.flush()
        except (OSError, ValueError) as exc:
            log.warning("decision log %s: %s", self.path, exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class KafkaDecisionLog:
    """Produces each record to a topic, keyed by the profile key (asynchronously: delivery
    failures are counted by the callback; a full local queue is retried briefly)."""

    def __init__(self, brokers: str, topic: str, on_failure: Any = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._on_failure = on_failure
        self._producer = Producer(
            {"bootstrap.servers": brokers, "linger.ms": 5, "enable.idempotence": True}
        )

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            log.warning("decision log: delivery to %s failed: %s", self.topic, err)
            if self._on_failure is not None:
                self._on_failure()

    def write(self, key: str, record: bytes) -> bool:
        for _ in range(10):
            try:
                self._producer.produce(
                    self.topic, record, key.encode(), on_delivery=self._delivered
                )
                self._producer.poll(0)
                return True
            except BufferError:  # the local queue is full (DESIGN.md, known traps)
                self._producer.poll(0.01)
        log.warning("decision log: local queue full, record for %s not written", key)
        return False

    def close(self) -> None:
        self._producer.flush(5)

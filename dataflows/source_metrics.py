"""What the Kafka source measures about its reading: consumer lag and record age (metrics
only: they never change what is read)."""

from __future__ import annotations

import time
from typing import Any

from dataflows import metrics

#: Seconds between two updates of a partition's consumer-lag gauge.
LAG_INTERVAL_S = 2.0


class ReadMetrics:
    """One partition's ``nextbest_kafka_consumer_lag`` and ``nextbest_kafka_record_age_seconds``."""

    def __init__(self, topic: str, part: int) -> None:
        self._lag = metrics.KAFKA_CONSUMER_LAG.labels(topic, str(part))
        self._age = metrics.KAFKA_RECORD_AGE.labels(topic)
        self._lag_due = 0.0

    def observe(self, consumer: Any, tp: Any, offset: int | None, newest_ms: int | None) -> None:
        """After a read: the age of its newest record (Kafka timestamp), and at most every
        :data:`LAG_INTERVAL_S` the lag from the consumer's cached high watermark (no broker
        round trip; unknown until the first fetch answered: the gauge keeps its last value)."""
        if newest_ms is not None:
            self._age.observe(max(0.0, time.time() - newest_ms / 1000))
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL_S
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
        except Exception:  # a metric only: never let it disturb reading
            return
        if high is not None and high >= 0:
            self._lag.set(max(0, high - (offset or 0)))

"""Deliver one segment-events record to every destination that wants its segment.

:meth:`Deliverer.handle` returns only when the record is *done* — delivered or dead-lettered
for every destination — or *abandoned* because a stop was asked for (then the caller does not
commit it, and it is delivered again after a restart: receivers dedupe by ``Idempotency-Key``).
Records are handled one at a time, so the records of one partition (one customer's
transitions) reach each destination in order.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from nextbest.delivery import metrics
from nextbest.delivery.config import Destination, WebhookConfig
from nextbest.delivery.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    backoff_delay,
    retry_after_seconds,
    signature,
)
from nextbest.delivery.transport import Attempt, Endpoint

log = logging.getLogger("nextbest.deliver")


class DeadLetters(Protocol):
    """Where records given up go (a Kafka topic or a JSONL file)."""

    def write(self, key: bytes | None, value: bytes, stop: threading.Event) -> bool:
        """Write durably; False only when ``stop`` was set while the write kept failing."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Transition:
    """The fields delivery needs from a record (the body sent is the record's own bytes)."""

    transition_id: str
    customer_id: str
    segment: str
    emitted_at_s: float | None


def parse_transition(value: bytes) -> Transition | str:
    """The record's transition, or why it is not one.

    >>> parse_transition(b'{"transition_id":"ab","customer_id":"42","segment":"at_risk"}')
    Transition(transition_id='ab', customer_id='42', segment='at_risk', emitted_at_s=None)
    >>> parse_transition(b'{"customer_id":"42"}')
    'missing or non-string transition_id'
    """
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(doc, dict):
        return "not a JSON object"
    out: dict[str, str] = {}
    for field in ("transition_id", "customer_id", "segment"):
        v = doc.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and field == "customer_id":
            v = str(v)
        if not isinstance(v, str) or not v:
            return f"missing or non-string {field}"
        out[field] = v
    emitted = doc.get("emitted_at")
    emitted_s = None
    if isinstance(emitted, str):
        try:
            emitted_s = datetime.fromisoformat(emitted).timestamp()
        except ValueError:
            emitted_s = None
    return Transition(out["transition_id"], out["customer_id"], out["segment"], emitted_s)


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_record(
    value: bytes,
    destination: Destination | None,
    attempts: int,
    last: Attempt | None,
    reason: str,
) -> bytes:
    """The dead-letter record: the record (as JSON when it is JSON), the destination, the
    attempts made and the last status or error."""
    try:
        record: Any = orjson.Fragment(orjson.dumps(orjson.loads(value)))
    except orjson.JSONDecodeError:
        record = value.decode("utf-8", "replace")
    doc = {
        "reason": reason,
        "destination": destination.name if destination else None,
        "url": destination.url if destination else None,
        "attempts": attempts,
        "status": last.status if last else None,
        "error": last.error if last else reason,
        "failed_at": _now_rfc3339(),
        "record": record,
    }
    return orjson.dumps(doc)


class Deliverer:
    """Sends records to the configured destinations with retries; see the module docstring."""

    def __init__(
        self,
        config: WebhookConfig,
        dead_letters: DeadLetters,
        stop: threading.Event,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._dead = dead_letters
        self._stop = stop
        self._rng = rng or random.Random()
        self._clock = clock
        self._endpoints = {d.name: Endpoint(d.url, d.timeout_s) for d in config.destinations}

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            endpoint.close()

    def handle(self, value: bytes) -> bool:
        """Deliver one record; True when done (commit it), False when abandoned on stop."""
        parsed = parse_transition(value)
        if isinstance(parsed, str):
            log.warning("segment-events record is not a transition (%s): dead-lettered", parsed)
            if not self._dead.write(None, dead_letter_record(value, None, 0, None, "bad_record"),
                                    self._stop):  # fmt: skip
                return False
            metrics.BAD_RECORDS.inc()
            metrics.RECORDS.inc()
            return True
        for dest in self.config.for_segment(parsed.segment):
            if not self._deliver(dest, parsed, value):
                return False
        metrics.RECORDS.inc()
        return True

    def _deliver(self, dest: Destination, t: Transition, body: bytes) -> bool:
        headers = {
            SIGNATURE_HEADER: signature(body, dest.secret),
            IDEMPOTENCY_HEADER: t.transition_id,
        }
        endpoint = self._endpoints[dest.name]
        last: Attempt | None = None
        for n in range(1, dest.max_attempts + 1):
            if self._stop.is_set():
                return False
            headers["X-Nextbest-Attempt"] = str(n)
            last = endpoint.post(body, headers)
            metrics.ATTEMPTS.labels(dest.name, last.outcome).inc()
            metrics.LATENCY.labels(dest.name).observe(last.seconds)
            if last.ok:
                if t.emitted_at_s is not None:
                    metrics.LAG.labels(dest.name).observe(max(0.0, self._clock() - t.emitted_at_s))
                return True
            if not last.retriable or n == dest.max_attempts:
                break
            delay = backoff_delay(n, dest.backoff_base_s, dest.backoff_cap_s, self._rng)
            hinted = retry_after_seconds(last.retry_after, dest.backoff_cap_s)
            if hinted is not None and last.outcome == "throttled":
                delay = max(delay, hinted)
            log.info("deliver %s -> %s: attempt %d failed (%s); next in %.2fs",
                     t.transition_id, dest.name, n, last.error, delay)  # fmt: skip
            if self._stop.wait(delay):
                return False
        assert last is not None
        reason = "not_retriable" if not last.retriable else "attempts_exhausted"
        log.warning("deliver %s -> %s: dead-lettered after %d attempt(s) (%s)",
                    t.transition_id, dest.name, n, last.error)  # fmt: skip
        record = dead_letter_record(body, dest, n, last, reason)
        if not self._dead.write(t.customer_id.encode(), record, self._stop):
            return False
        metrics.DEAD_LETTERS.labels(dest.name).inc()
        return True

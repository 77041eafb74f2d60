"""The sinks' failure policy: :class:`SinkOptions` (from settings), :class:`Retrier` and
:class:`Fallback`, shared by the Redis sink (:mod:`dataflows.sinks`) and the dead-letter sinks
(:mod:`dataflows.deadletters`).

A write that fails for a retriable reason (Redis or the broker unreachable, Redis loading,
read-only after a failover, out of memory) is retried with exponential backoff until it succeeds,
or until ``NEXTBEST_SINK_RETRY_LIMIT`` if one is set. Meanwhile the worker waits in the sink, so the
source is not read (back-pressure: nothing is read and dropped), ``nextbest_sink_stalled{sink}``
is 1 and each error kind is logged once per stall. A write that fails for a reason a retry cannot
fix (a record the broker refuses, an error reply) is counted, logged once per kind and written to
a local fallback file (``<NEXTBEST_HOME>/fallback/``); the flow goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dataflows import metrics
from dataflows.records import DEAD_LETTER_MAX_BYTES

#: The sinks' logger, named as before the split (log lines and filters stay the same).
log = logging.getLogger("dataflows.sinks")


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

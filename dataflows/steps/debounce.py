"""Coalesced Redis writes of a keyed step."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from dataflows.records import (
    SinkOp,
)
from dataflows.steps import RETAIN, Out


class Debounced:
    """Coalesces a key's Redis writes: at most one per ``interval`` of wall time, the last one
    on the next notification or at the end of the input. ``dirty`` survives recovery."""

    dirty: bool = False
    last_write: float = 0.0
    interval: float = 0.0
    #: the Kafka timestamp (epoch ms) of the oldest change not yet written, for freshness
    #: (``None``: none, or changes from a file; not in the snapshots: wall-clock bookkeeping)
    produced_at: int | None = None
    #: where the write's freshness goes (``None``: not measured)
    freshness: Any = None

    def note_produced(self, ts_ms: int | None) -> None:
        """A change came from a record produced at ``ts_ms`` (Kafka timestamp; files: None)."""
        if ts_ms is not None and (self.produced_at is None or ts_ms < self.produced_at):
            self.produced_at = ts_ms

    def pending_write(self) -> SinkOp | None:
        """The projection to write now (``None`` when nothing changed)."""
        raise NotImplementedError

    def flush(self, force: bool) -> list[Out]:
        """Write if dirty and (forced or the interval has passed)."""
        if not self.dirty:
            return []
        now = time.monotonic()
        if not force and now - self.last_write < self.interval:
            return []
        op_ = self.pending_write()
        self.dirty = False
        self.last_write = now
        if self.produced_at is not None:
            if self.freshness is not None and op_ is not None:
                self.freshness.observe(max(0.0, time.time() - self.produced_at / 1000))
            self.produced_at = None
        return [] if op_ is None else [op_]

    def notify_at(self) -> datetime | None:
        if not self.dirty:
            return None
        wait = self.last_write + self.interval - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def on_notify(self) -> tuple[Iterable[Out], bool]:
        return self.flush(force=True), RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return self.flush(force=True), RETAIN

"""The event-time clocks: watermark, timers, ticks, re-projection requests.

The two clocks (``device_clock``, ``customer_clock``) are :class:`features.clock.EventClock`
instances fed by the events themselves: they keep the event-time watermark (newest event time
minus the allowed lateness) and send a :class:`~dataflows.records.Tick` to a key whose timer the
watermark passed (retention; for customers also label maturity and idle snapshots). Each is one
owner today (key ``"clock"``): see issue 9 for the clock that scales.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.records import (
    Handover,
    In,
    Reproject,
    Tick,
)
from dataflows.reproject import Reprojection
from dataflows.snapshots import ClockSnapshot, dump, load_clock
from dataflows.steps import RETAIN, Keyed
from features import profile as pf
from features.clock import NO_WATERMARK, EventClock
from models import labels as lb

RETENTION = "retention"

ClockRequest = tuple[list[tuple[str, str, int]], int]  # (timers (key, kind, deadline), newest)


IDLE = "idle"
#: The key of the customer clock's event-time reports to the model owners.
MODEL_TIME = ""


def label_timers(key: str, day: int, horizons: lb.Horizons) -> list[tuple[str, str, int]]:
    """``label:<target>:<day>`` at the end of a snapshot day + the horizon + 1 ms: no earlier
    than any snapshot of that day matures, so labels mature at most a day late."""
    end = (day + 1) * lb.DAY_MS
    return [(key, f"label:{t}:{day}", end + horizons.of(t) + 1) for t in lb.TARGETS]


def clock_requests(
    retention_ms: int, horizons: lb.Horizons | None = None, idle_days: int = 0
) -> Callable[[list[Keyed]], list[ClockRequest]]:
    """Condense a batch of keyed items into one clock request: timers to (re)set, newest ts.

    Timers: ``retention`` at the key's newest event + retention; with ``horizons`` (customers),
    the :func:`label_timers` of every UTC day with events and, with ``idle_days``, ``idle`` at the
    end of the first idle snapshot day (``idle_days`` after the newest event's day; see
    :func:`models.labels.on_idle`), which :class:`ClockLogic` moves on by ``idle_days`` each
    time it fires.
    """

    def condense(batch: list[Keyed]) -> list[ClockRequest]:
        newest_by_key: dict[str, int] = {}
        days: set[tuple[str, int]] = set()
        newest = None
        for key, (_, item) in batch:
            if isinstance(item, In):
                ts = item.event.ts
            elif isinstance(item, Handover):
                ts = pf.last_event_ts(item.state)
            else:
                continue
            if newest_by_key.get(key, -1) < ts:
                newest_by_key[key] = ts
            if horizons is not None:
                days.add((key, ts // lb.DAY_MS))
            if newest is None or ts > newest:
                newest = ts
        if newest is None:
            return []
        timers = [(k, RETENTION, ts + retention_ms) for k, ts in newest_by_key.items()]
        if horizons is not None:
            for key, day in days:
                timers.extend(label_timers(key, day, horizons))
            if idle_days > 0:
                step = idle_days * lb.DAY_MS
                for k, ts in newest_by_key.items():
                    timers.append((k, IDLE, (ts // lb.DAY_MS + 1) * lb.DAY_MS + step))
        return [(timers, newest)]

    return condense


class ClockLogic(StatefulBatchLogic[Any, tuple[str, Tick], Any]):
    """One owner of an :class:`EventClock`; emits ``(key, Tick)`` for due timers.

    An ``idle`` timer that fires (with ``horizons`` and ``idle_days``) sets the label timers of
    its day and comes back ``idle_days`` later, for as long as the key's retention timer is later.
    With ``horizons``, the end of the input (a replay) gives every key with a pending timer a last
    tick at the final watermark: what has matured by then is learned whatever the batching was.

    The clock advances to the newest event time of the *previous* call, not of this one: the
    events of a batch reach the profile step by other paths than the clock's ticks, and a tick at
    a watermark computed from a batch could overtake the earlier events of that same batch (which
    would then be "late for the clock": labels and idle snapshots would depend on the batching).
    One call later they have been applied.

    With ``horizons`` it also tells the model owners how far event time has come, as
    ``(MODEL_TIME, Tick(watermark))`` with the watermark of the *previous* call: by then the ticks
    of that watermark have been through the profile step, so every label due by it was sent.

    Re-projection (:mod:`dataflows.reproject`): when ``reprojection`` asks for it, the clock
    sends a :class:`Reproject` to every key it knows (every live key has a retention timer), at
    most ``rate`` keys per second of wall time, and (with ``owners``) one to ``MODEL_TIME`` for
    the model and RFM owners. The keys still to do are part of the snapshot.
    """

    def __init__(
        self,
        clock: EventClock,
        recovery: bool,
        name: str,
        horizons: lb.Horizons | None = None,
        idle_days: int = 0,
        pending: int | None = None,
        reprojection: Reprojection | None = None,
        rate: int = 10_000,
        owners: bool = False,
        queue: list[str] | None = None,
    ) -> None:
        self.clock = clock
        #: the newest event time seen by the previous call (the next advance)
        self.pending = pending
        self.recovery = recovery
        self.name = name
        self.gauge = metrics.WATERMARK.labels(name)
        self.horizons = horizons
        self.idle_ms = idle_days * lb.DAY_MS
        self.reprojection = reprojection
        self.answered = 0  # the last re-projection request answered (not in the snapshot)
        self.rate = rate
        self.owners = owners
        #: keys still to re-project, the next one last
        self.queue: list[str] = queue or []
        self.budget = 0.0
        self.budget_at = time.monotonic()

    def _reproject(self, everything: bool = False) -> list[tuple[str, Any]]:
        """Answer a new re-projection request; send the next keys the rate allows."""
        out: list[tuple[str, Any]] = []
        asked = self.reprojection.generation if self.reprojection is not None else 0
        if asked != self.answered:
            self.answered = asked
            self.queue = sorted(self.clock.keys() | set(self.queue), reverse=True)
            self.budget, self.budget_at = 0.0, time.monotonic()
            if self.owners:
                out.append((MODEL_TIME, Reproject()))
        if not self.queue:
            return out
        now = time.monotonic()
        self.budget = min(self.rate, self.budget + (now - self.budget_at) * self.rate)
        self.budget_at = now
        n = len(self.queue) if everything else min(int(self.budget), len(self.queue))
        self.budget -= n
        for _ in range(n):
            out.append((self.queue.pop(), Reproject()))
        if n:
            metrics.REPROJECTED_KEYS.labels(self.name).inc(n)
        return out

    def notify_at(self) -> datetime | None:
        if self.reprojection is None:
            return None
        # the next keys of a re-projection soon, else look for a request once a second
        wait = 0.05 if self.queue else 1.0
        return datetime.now(UTC) + timedelta(seconds=wait)

    def on_notify(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        return self._reproject(), RETAIN

    def _fired(self, due: list[tuple[str, str, int]], keys: set[str]) -> list[tuple[str, str, int]]:
        """Collect the keys of fired timers; re-arm idle timers (returns what became due again)."""
        clock = self.clock
        rearmed = False
        for key, kind, deadline in due:
            keys.add(key)
            if kind != IDLE or self.horizons is None:
                continue
            for k, label_kind, at in label_timers(key, deadline // lb.DAY_MS - 1, self.horizons):
                clock.set_timer(k, label_kind, at)
            nxt = deadline + self.idle_ms
            keep = clock.deadline(key, RETENTION)
            if keep is not None and nxt < keep:
                clock.set_timer(key, IDLE, nxt)
            rearmed = True
        return clock.due() if rearmed else []

    def on_batch(self, values: list[Any]) -> tuple[Iterable[tuple[str, Tick]], bool]:
        clock = self.clock
        newest = self.pending
        for timers, ts in values:
            for key, kind, deadline in timers:
                clock.set_timer(key, kind, deadline)
            if newest is None or ts > newest:
                newest = ts
        told = clock.watermark  # where the previous call left it: what the model owners hear
        out: list[tuple[str, Any]] = [*self._advance(self.pending)]
        self.pending = newest
        if self.horizons is not None and told > NO_WATERMARK:
            out.append((MODEL_TIME, Tick(told)))
        out.extend(self._reproject())
        return out, RETAIN

    def _advance(self, newest: int | None) -> list[tuple[str, Tick]]:
        clock = self.clock
        keys: set[str] = set()
        due = clock.advance(newest) if newest is not None else []
        while due:
            due = self._fired(due, keys)
        self.gauge.set(max(clock.watermark, 0) / 1000)
        return [(key, Tick(clock.watermark)) for key in sorted(keys)]

    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        ticks = self._advance(self.pending)
        if self.horizons is not None:
            wm = self.clock.watermark
            keys = self.clock.keys() | {k for k, _ in ticks}
            ticks = [(key, Tick(wm)) for key in sorted(keys)]
        return [*ticks, *self._reproject(everything=True)], RETAIN

    def snapshot(self) -> Any:
        if not self.recovery:
            return None
        return dump(ClockSnapshot(self.clock, self.pending, self.queue))


def newest_ts(batch: list[In]) -> list[ClockRequest]:
    """One clock observation per batch of all events: the watermark follows the whole stream."""
    if not batch:
        return []
    return [([], max(item.event.ts for item in batch))]


def add_clock(
    step_id: str,
    keyed: Stream[Keyed],
    observed: Stream[Any],
    cfg: FlowConfig,
    horizons: lb.Horizons | None = None,
    reprojection: Reprojection | None = None,
    owners: bool = False,
) -> Stream[Keyed]:
    """Ticks for the keys of ``keyed`` whose timers the event-time watermark passed.

    Timers come from ``keyed`` (retention: newest event of the key + retention); the watermark
    follows ``observed``, the clock observations of every event of the stream. With
    ``reprojection``, also the :class:`Reproject` of every key when Redis lost its data (and
    with ``owners`` one for the model and RFM owners, under ``MODEL_TIME``).
    """
    idle_days = cfg.idle_snapshot_days if horizons is not None else 0
    requests = op.flat_map_batch(
        f"{step_id}_requests", keyed, clock_requests(cfg.retention_ms, horizons, idle_days)
    )
    inputs = op.merge(f"{step_id}_inputs", requests, observed)

    def build(resume: Any) -> ClockLogic:
        snap = load_clock(resume, cfg.lateness_ms)
        return ClockLogic(snap.clock, cfg.recovery, step_id, horizons, idle_days, snap.pending,
                          reprojection, cfg.reproject_rate, owners, snap.queue)  # fmt: skip

    ticks = op.stateful_batch(
        step_id, op.key_on(f"{step_id}_key", inputs, lambda _: "clock"), build
    )
    return op.map(f"{step_id}_route", ticks, lambda kv: (kv[1][0], kv[1]))

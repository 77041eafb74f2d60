"""The event-time clocks: watermark, timers, ticks, re-projection requests.

The two clocks (``device_clock``, ``customer_clock``) are :class:`features.clock.EventClock`
instances fed by the events themselves: they keep the event-time watermark (newest event time
minus the allowed lateness) and send a :class:`~dataflows.records.Tick` to a key whose timer the
watermark passed (retention; for customers also label maturity and idle snapshots).

**Shards, not one owner.** Each clock is :data:`CLOCK_SHARDS` keyed states: a key's timers live in
shard :func:`shard_of` (a stable hash of the key), so with several workers the timers, their
heaps and their snapshots are spread over the workers like the profiles are. The watermark is
computed the same way in every shard: every clock input (the newest event time of each batch,
and of each batch of timer requests) is broadcast to all shards, so each shard is called exactly
when the one owner used to be, with the same newest event time, and fires a key's timers in the
same call as before. The model owners learn the event time from every shard and go by the
slowest (:class:`~dataflows.records.ClockTime`). Shard 0's key is ``"clock"``, the key of the
single owner before the shards: a recovery written before resumes its timers there (they fire
as before; a key's newer timers are in its own shard, and a second tick for a key is harmless:
the keyed steps check retention and labels against their own state).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.erasure import Erase
from dataflows.records import (
    ClockTime,
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

#: What a clock shard is told: (timers (key, kind, deadline) of its keys, newest event ts, shard).
ClockRequest = tuple[list[tuple[str, str, int]], int, int]

#: Shards per clock. Fixed: a key's timers are in shard ``shard_of(key)`` of the recovery state,
#: so changing it would strand resumed timers. Results do not depend on it (see the docstring).
CLOCK_SHARDS = 16

#: What a clock shard emits: a key's tick or re-projection, or its own event time for the owners.
ClockOut = tuple[str, Tick | ClockTime | Reproject]


IDLE = "idle"
#: A request's pseudo-timer kind: forget every timer of the key (an erasure).
FORGET = "*forget"
#: A request's pseudo-timer kind: the ``idle`` timer the key would have had after the oldest of
#: its events in the batch (set only when the key has none): see :func:`clock_requests`.
IDLE_FROM = "*idle-from"
#: The newest time of a request that carries no event (only erasures).
NO_TS = -(2**62)
#: The key of the customer clock's event-time reports to the model owners.
MODEL_TIME = ""


def shard_of(key: str) -> int:
    """The clock shard of a key: a stable hash (the same in every process and run).

    >>> shard_of("c:42"), shard_of("c:43"), 0 <= shard_of("a:x") < 16
    (0, 6, True)
    """
    return zlib.crc32(key.encode()) % CLOCK_SHARDS


def shard_key(shard: int) -> str:
    """The Bytewax key of a shard; shard 0 is ``"clock"``, the single owner's key before shards.

    >>> shard_key(0), shard_key(3)
    ('clock', 'clock:3')
    """
    return "clock" if shard == 0 else f"clock:{shard}"


_SHARD_KEYS = tuple(shard_key(i) for i in range(CLOCK_SHARDS))


def broadcast(newest: int, timers: dict[int, list[tuple[str, str, int]]] | None = None
              ) -> list[tuple[str, ClockRequest]]:  # fmt: skip
    """One request per shard: its timers (if any) and the newest event time, for all of them.

    >>> [(k, r) for k, r in broadcast(7, {2: [("c:1", "retention", 9)]}) if r[0] or k == "clock"]
    [('clock', ([], 7, 0)), ('clock:2', ([('c:1', 'retention', 9)], 7, 2))]
    """
    got = timers or {}
    return [(_SHARD_KEYS[i], (got.get(i, []), newest, i)) for i in range(CLOCK_SHARDS)]


def label_timers(key: str, day: int, horizons: lb.Horizons) -> list[tuple[str, str, int]]:
    """``label:<target>:<day>`` at the end of a snapshot day + the horizon + 1 ms: no earlier
    than any snapshot of that day matures, so labels mature at most a day late."""
    end = (day + 1) * lb.DAY_MS
    return [(key, f"label:{t}:{day}", end + horizons.of(t) + 1) for t in lb.TARGETS]


def clock_requests(
    retention_ms: int,
    horizons: lb.Horizons | None = None,
    idle_days: int = 0,
    wake: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
) -> Callable[[list[Keyed]], list[tuple[str, ClockRequest]]]:
    """Condense a batch of keyed items into clock requests: per shard the timers of its keys to
    (re)set, and to every shard the newest ts (see :func:`broadcast`).

    Timers: ``retention`` at the key's newest event + retention; with ``horizons`` (customers) and
    ``idle_days``, ``idle`` at the start of the key's first snapshot day after its newest event
    (:func:`models.labels.next_snapshot_day`), which :class:`ClockLogic` moves on by
    ``idle_days`` each time it fires, setting that day's :func:`label_timers`; with ``wake``
    (segments: offsets after the newest event, and after the newest purchase, see
    :func:`dataflows.steps.segments.wake_offsets`) ``seg:e<i>`` and ``seg:p<i>`` at those times.
    """
    after_event, after_purchase = wake

    def condense(batch: list[Keyed]) -> list[tuple[str, ClockRequest]]:
        newest_by_key: dict[str, int] = {}
        oldest_by_key: dict[str, int] = {}
        purchase_by_key: dict[str, int] = {}
        newest = None
        erased: set[str] = set()
        for key, (_, item) in batch:
            if isinstance(item, Erase):
                erased.add(key)
                continue
            if isinstance(item, In):
                ts = item.event.ts
                is_purchase = after_purchase and item.event.type == "purchase"
                if is_purchase and purchase_by_key.get(key, -1) < ts:
                    purchase_by_key[key] = ts
            elif isinstance(item, Handover):
                ts = pf.last_event_ts(item.state)
            else:
                continue
            if newest_by_key.get(key, -1) < ts:
                newest_by_key[key] = ts
            if ts < oldest_by_key.get(key, ts + 1):
                oldest_by_key[key] = ts
            if newest is None or ts > newest:
                newest = ts
        if erased:  # (the key's timers go; a profile started after it in this batch waits for
            # its next event to get new ones)
            for k in erased:
                newest_by_key.pop(k, None)
                purchase_by_key.pop(k, None)
            forget: dict[int, list[tuple[str, str, int]]] = {}
            for k in sorted(erased):
                forget.setdefault(shard_of(k), []).append((k, FORGET, 0))
            if newest is None:
                return [(_SHARD_KEYS[i], (ts_list, NO_TS, i)) for i, ts_list in forget.items()]
        if newest is None:
            return []
        timers = [(k, RETENTION, ts + retention_ms) for k, ts in newest_by_key.items()]
        for i, off in enumerate(after_event):
            timers.extend((k, f"seg:e{i}", ts + off) for k, ts in newest_by_key.items())
        for i, off in enumerate(after_purchase):
            timers.extend((k, f"seg:p{i}", ts + off) for k, ts in purchase_by_key.items())
        if horizons is not None and idle_days > 0:
            # A new key's events of one batch can span its snapshot day: the profile step takes
            # that day's snapshot at the later event, and the clock must set its label timers
            # as if the earlier event had come alone (the idle timer after it, then moved on).
            for k, ts in newest_by_key.items():
                first = lb.next_snapshot_day(k, oldest_by_key[k] // lb.DAY_MS, idle_days)
                day = lb.next_snapshot_day(k, ts // lb.DAY_MS, idle_days)
                if first != day:
                    timers.append((k, IDLE_FROM, first * lb.DAY_MS))
                timers.append((k, IDLE, day * lb.DAY_MS))
        shard = {k: shard_of(k) for k in newest_by_key}
        by_shard: dict[int, list[tuple[str, str, int]]] = dict(forget) if erased else {}
        for timer in timers:
            by_shard.setdefault(shard[timer[0]], []).append(timer)
        return broadcast(newest, by_shard)

    return condense


class ClockLogic(StatefulBatchLogic[Any, ClockOut, Any]):
    """One shard of a clock: an :class:`EventClock`; emits ``(key, Tick)`` for due timers.

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
    ``(MODEL_TIME, ClockTime(shard, watermark))`` with the watermark of the *previous* call: by
    then the ticks of that watermark have been through the profile step, so every label due by it
    was sent (from this shard: the owners take the slowest shard).

    Re-projection (:mod:`dataflows.reproject`): when ``reprojection`` asks for it, the clock
    sends a :class:`Reproject` to every key it knows (every live key has a retention timer), at
    most ``rate`` keys per second of wall time (the shards share the configured rate), and (with
    ``owners``, from shard 0) one to ``MODEL_TIME`` for the model and RFM owners. The keys still
    to do are part of the snapshot.
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
        shard: int = 0,
        final_ticks: bool = False,
    ) -> None:
        self.clock = clock
        #: which shard this is (learned from the requests; 0 for a resumed single owner)
        self.shard = shard
        #: tick every key at the end of the input even without horizons (segments catch up)
        self.final_ticks = final_ticks
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
            if self.owners and self.shard == 0:
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

    def _idle_days_taken_at_an_event(self, key: str, deadline: int) -> None:
        """A customer's event came before their idle timer fired: the profile step takes the
        snapshots of the snapshot days up to the event's day at that event; set those days'
        label timers (the idle timer would have), so their labels mature on time."""
        old = self.clock.deadline(key, IDLE)
        if old is None or old >= deadline or self.horizons is None or not self.idle_ms:
            return
        every = self.idle_ms // lb.DAY_MS
        for day in range(old // lb.DAY_MS, deadline // lb.DAY_MS, every):
            for k, label_kind, at in label_timers(key, day, self.horizons):
                self.clock.set_timer(k, label_kind, at)

    def _fired(self, due: list[tuple[str, str, int]], keys: set[str]) -> list[tuple[str, str, int]]:
        """Collect the keys of fired timers; re-arm idle timers (returns what became due again)."""
        clock = self.clock
        rearmed = False
        for key, kind, deadline in due:
            keys.add(key)
            if kind != IDLE or self.horizons is None:
                continue
            for k, label_kind, at in label_timers(key, deadline // lb.DAY_MS, self.horizons):
                clock.set_timer(k, label_kind, at)
            nxt = deadline + self.idle_ms
            keep = clock.deadline(key, RETENTION)
            if keep is not None and nxt < keep:
                clock.set_timer(key, IDLE, nxt)
            rearmed = True
        return clock.due() if rearmed else []

    def on_batch(self, values: list[Any]) -> tuple[Iterable[ClockOut], bool]:
        clock = self.clock
        newest = self.pending
        for timers, ts, shard in values:
            self.shard = shard
            for key, kind, deadline in timers:
                if kind == FORGET:
                    clock.forget(key)
                    continue
                if kind == IDLE_FROM:
                    if clock.deadline(key, IDLE) is None:
                        clock.set_timer(key, IDLE, deadline)
                    continue
                if kind == IDLE:
                    self._idle_days_taken_at_an_event(key, deadline)
                clock.set_timer(key, kind, deadline)
            if ts != NO_TS and (newest is None or ts > newest):
                newest = ts
        told = clock.watermark  # where the previous call left it: what the model owners hear
        out: list[tuple[str, Any]] = [*self._advance(self.pending)]
        self.pending = newest
        if self.horizons is not None and told > NO_WATERMARK:
            out.append((MODEL_TIME, ClockTime(self.shard, told)))
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
        if self.horizons is not None or self.final_ticks:
            wm = self.clock.watermark
            keys = self.clock.keys() | {k for k, _ in ticks}
            ticks = [(key, Tick(wm)) for key in sorted(keys)]
        return [*ticks, *self._reproject(everything=True)], RETAIN

    def snapshot(self) -> Any:
        if not self.recovery:
            return None
        return dump(ClockSnapshot(self.clock, self.pending, self.queue, self.shard))


def newest_ts(batch: list[In]) -> list[int]:
    """One clock observation per batch of all events: the watermark follows the whole stream."""
    if not batch:
        return []
    return [max(item.event.ts for item in batch)]


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
    wake: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    if owners and cfg.segments is not None:
        from dataflows.steps.segments import wake_offsets

        wake = wake_offsets(cfg.segments.segments)
    requests = op.flat_map_batch(
        f"{step_id}_requests", keyed, clock_requests(cfg.retention_ms, horizons, idle_days, wake)
    )
    told = op.flat_map(f"{step_id}_broadcast", observed, broadcast)
    inputs = op.merge(f"{step_id}_inputs", requests, told)
    rate = max(1, -(-cfg.reproject_rate // CLOCK_SHARDS))

    def build(resume: Any) -> ClockLogic:
        snap = load_clock(resume, cfg.lateness_ms)
        return ClockLogic(snap.clock, cfg.recovery, step_id, horizons, idle_days, snap.pending,
                          reprojection, rate, owners, snap.queue, snap.shard,
                          final_ticks=bool(wake[0] or wake[1]))  # fmt: skip

    ticks = op.stateful_batch(step_id, inputs, build)
    return op.map(f"{step_id}_route", ticks, lambda kv: (kv[1][0], kv[1]))

"""The profile dataflow: wiring only; the logic lives in ``features/``.

Step ids are stable names: Bytewax recovery state is keyed by them.

    read -> decode -> split_rejected -(rejects)-------------------------------> dead_letter
                        |
                        +-> split_identity -(anonymous-only events, login/signup links)
                        |     -> key_by_device -> identity (per a:<anonymous_id>, + device_clock)
                        |          anonymous profiles, links, hand-overs, routing to customers
                        +-> key_by_customer ----+
                                    (+ routed) -+-> profile (per c:<customer_id>, + customer_clock)
                                                       -> rfm (one owner)
    identity, profile, rfm -> write_redis (one command per changed key, pipelined per batch)

The two clocks are :class:`features.clock.EventClock` instances fed by the events themselves: they
keep the event-time watermark (newest event time minus the allowed lateness) and send a
:class:`~dataflows.records.Tick` to a key whose timer the watermark passed (today: retention).
"""

from __future__ import annotations

import heapq
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from dataflows import metrics
from dataflows.records import (
    DropProfile,
    Handover,
    In,
    RawRecord,
    Rejected,
    Reproject,
    SinkOp,
    Tick,
    WriteBoundaries,
    WriteCheckpoint,
    WriteLink,
    WriteProfile,
    decode_record,
    late,
)
from dataflows.reproject import Reprojection
from dataflows.sinks import RedisSink
from features import profile as pf
from features import rfm
from features.clock import NO_WATERMARK, EventClock
from features.identity import DeviceState, needs_identity, on_event
from models import labels as lb
from models.features import state_features
from models.online import OnlineModel

RETAIN = StatefulBatchLogic.RETAIN
DISCARD = StatefulBatchLogic.DISCARD
RETENTION = "retention"


@dataclass(frozen=True)
class FlowConfig:
    """The knobs of the flow (from settings)."""

    lateness_ms: int = 600_000
    retention_ms: int = 400 * 86_400_000
    recovery: bool = False
    rfm_publish_every: int = 1000
    #: A changed profile is written at most once per this many wall-clock ms (the rest of the
    #: changes in between are coalesced into the next write); 0 writes after every batch.
    write_interval_ms: int = 0
    #: Label horizons (churn, propensity) and the model settings.
    horizons: lb.Horizons = lb.DEFAULT_HORIZONS
    model_pipeline: str = "logreg"
    model_min_examples: int = 500
    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 30_000
    #: Take training snapshots and learn the online models (off: profiles only).
    models: bool = True
    #: Days between idle snapshots of a customer who stays away (0: none; see models.labels).
    idle_snapshot_days: int = 7
    #: Keys per second a clock re-projects after Redis lost its data.
    reproject_rate: int = 10_000
    #: Events more than this ahead of their record's own timestamp are rejected (0: no check).
    max_future_ms: int = 86_400_000


@dataclass
class FlowStats:
    """Counts of one in-process run, for the CLI summary (the same numbers go to Prometheus)."""

    read: int = 0
    decoded: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    customers: int = 0
    visitors: int = 0
    dropped: int = 0

    @property
    def accepted(self) -> int:
        """Records that became applied (or ignored duplicate) events: read minus dead letters."""
        return self.read - sum(self.dead_lettered.values())

    def as_dict(self, seconds: float) -> dict[str, Any]:
        """The ``replay --json`` summary."""
        return {
            "read": self.read,
            "accepted": self.accepted,
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "duplicates": self.duplicates,
            "customers": self.customers,
            "visitors": self.visitors,
            "dropped_by_retention": self.dropped,
            "seconds": round(seconds, 3),
            "events_per_s": round(self.read / seconds, 1) if seconds > 0 else 0.0,
        }

    def reject(self, reason: str) -> None:
        """Count one dead letter."""
        self.dead_lettered[reason] += 1
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()


# ---------------------------------------------------------------------------------------------
# decode


def make_decoder(
    stats: FlowStats, source_label: str, max_future_ms: int = 0
) -> Callable[[list[RawRecord]], list[Any]]:
    """Batch decoder that counts what it sees (one call per source batch)."""
    read_counter = metrics.EVENTS_READ.labels(source_label)

    def decode_batch(batch: list[RawRecord]) -> list[In | Rejected]:
        out = [decode_record(r, max_future_ms) for r in batch]
        stats.read += len(batch)
        read_counter.inc(len(batch))
        for item in out:
            if isinstance(item, Rejected):
                stats.reject(item.error.reason)
            else:
                stats.decoded += 1
                metrics.EVENTS_ACCEPTED.labels(item.event.type).inc()
        return out

    return decode_batch


def is_event(item: In | Rejected) -> bool:
    """Branch predicate: decoded events go on, rejects go to the dead-letter output."""
    return isinstance(item, In)


Keyed = tuple[str, tuple[str, Any]]  # (key, (key, item)): the logic builders do not get the key


def key_events(batch: list[In]) -> list[Keyed]:
    """Key each event: ``a:<anonymous_id>`` for the identity step (anonymous-only events and
    login/signup links), else ``c:<customer_id>``. The key also travels in the value."""
    out: list[Keyed] = []
    for item in batch:
        ev = item.event
        key = "a:" + ev.anonymous_id if needs_identity(ev) else "c:" + (ev.customer_id or "")  # type: ignore[operator]
        out.append((key, (key, item)))
    return out


def is_device_item(kv: Keyed) -> bool:
    """Branch predicate: items keyed by device go to the identity step."""
    return kv[0].startswith("a:")


# ---------------------------------------------------------------------------------------------
# the event-time clock


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
        return pickle.dumps((self.clock, self.pending, self.queue)) if self.recovery else None


def resume_clock(
    resume: bytes | None, lateness_ms: int
) -> tuple[EventClock, int | None, list[str]]:
    """A clock step's state from its recovery snapshot (also the older formats: a bare clock,
    and (clock, pending) from before re-projection).

    >>> clock, pending, queue = resume_clock(pickle.dumps(EventClock(5)), 10)
    >>> clock.lateness_ms, pending, queue
    (5, None, [])
    >>> resume_clock(pickle.dumps((EventClock(5), 7)), 10)[1:]
    (7, [])
    >>> resume_clock(None, 10)[0].lateness_ms
    10
    """
    if not resume:
        return EventClock(lateness_ms), None, []
    state = pickle.loads(resume)
    if isinstance(state, EventClock):  # from before the clock ran a call behind
        return state, None, []
    if len(state) == 2:
        return state[0], state[1], []
    clock, pending, queue = state
    return clock, pending, queue


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
        clock, pending, queue = resume_clock(resume, cfg.lateness_ms)
        return ClockLogic(clock, cfg.recovery, step_id, horizons, idle_days, pending,
                          reprojection, cfg.reproject_rate, owners, queue)  # fmt: skip

    ticks = op.stateful_batch(
        step_id, op.key_on(f"{step_id}_key", inputs, lambda _: "clock"), build
    )
    return op.map(f"{step_id}_route", ticks, lambda kv: (kv[1][0], kv[1]))


# ---------------------------------------------------------------------------------------------
# identity (per device) and profile (per customer)

Out = tuple[str, Any]  # ("sink", SinkOp) | ("dead", Rejected) | ("route", (customer_key, item))


class Debounced:
    """Coalesces a key's Redis writes: at most one per ``interval`` of wall time, the last one
    on the next notification or at the end of the input. ``dirty`` survives recovery."""

    dirty: bool = False
    last_write: float = 0.0
    interval: float = 0.0

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
        return [] if op_ is None else [("sink", op_)]

    def notify_at(self) -> datetime | None:
        if not self.dirty:
            return None
        wait = self.last_write + self.interval - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def on_notify(self) -> tuple[Iterable[Out], bool]:
        return self.flush(force=True), RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return self.flush(force=True), RETAIN


class DeviceLogic(Debounced, StatefulBatchLogic[Any, Out, Any]):
    """Identity step for one device: links, the anonymous profile, routing to customers."""

    def __init__(
        self, resume: tuple[DeviceState, bool] | None, cfg: FlowConfig, stats: FlowStats
    ) -> None:
        self.state: DeviceState | None
        self.state, self.dirty = resume if resume is not None else (None, False)
        self.cfg = cfg
        self.stats = stats
        self.interval = cfg.write_interval_ms / 1000

    def pending_write(self) -> SinkOp | None:
        anon = self.state.anon if self.state is not None else None
        return None if anon is None else WriteProfile(anon.key, anon)

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[Iterable[Out], bool]:
        values.sort(key=lambda kv: arrival_order(kv[1]))
        out: list[Out] = []
        anon_changed = False
        for _, item in values:
            if isinstance(item, Reproject):
                out.extend(self._projection())
                continue
            if isinstance(item, Tick):
                st = self.state
                if st is not None and st.last_ts + self.cfg.retention_ms <= item.watermark:
                    self.stats.dropped += 1
                    metrics.PROFILES_DROPPED.inc()
                    return [*out, ("sink", DropProfile("a:" + st.anonymous_id))], DISCARD
                continue
            ev = item.event
            if self.state is None:
                self.state = DeviceState(ev.anonymous_id or "")
                self.stats.visitors += 1
            for action in on_event(self.state, ev, self.cfg.lateness_ms):
                kind = action[0]
                if kind == "customer":
                    out.append(("route", ("c:" + action[1], item)))
                elif kind == "merge":
                    out.append(("route", ("c:" + action[1], Handover(action[2]))))
                elif kind == "link":
                    out.append(("sink", WriteLink(self.state.anonymous_id, action[1])))
                elif kind == "anon_changed":
                    anon_changed = True
                elif kind == "late":
                    out.append(("dead", late(item)))
                elif kind == "duplicate":
                    self.stats.duplicates += 1
                    metrics.DUPLICATES.inc()
        if anon_changed:
            self.dirty = True
        out.extend(self.flush(force=False))
        # (only ticks or a re-projection for a device with no state: nothing to keep)
        return out, RETAIN if self.state is not None else DISCARD

    def _projection(self) -> list[Out]:
        """What Redis holds for the device: its link, else its anonymous profile."""
        st = self.state
        if st is None:
            return []
        if st.links:
            return [("sink", WriteLink(st.anonymous_id, st.links[-1].customer_id))]
        self.dirty = True
        return self.flush(force=True)

    def snapshot(self) -> Any:
        return pickle.dumps((self.state, self.dirty)) if self.cfg.recovery else None


def rfm_point(state: pf.ProfileState) -> rfm.RfmPoint | None:
    """The customer's RFM point (None before the first purchase)."""
    return rfm.rfm_point(state.purchases_total, state.revenue_total, state.last_purchase_ts)


def arrival_order(item: Any) -> tuple[int, int, str]:
    """Sort key inside one batch of a key: ticks first (time passed before these events were
    seen), then events by (ts, event_id), hand-overs by their newest event. Items of one key can
    reach a step through different paths (direct and routed by identity) in any order within a
    batch; sorting undoes that reordering."""
    if isinstance(item, In):
        return (1, item.event.ts, item.event.event_id)
    if isinstance(item, Handover):
        return (1, pf.last_event_ts(item.state), "")
    if isinstance(item, Reproject):
        return (2, 0, "")
    return (0, item.watermark, "")


def _emit_examples(
    examples: list[lb.Example], out: list[Out], labels: lb.PendingLabels | None, skipped: int
) -> None:
    """One ``("examples", (target, [example, ...]))`` per target: fewer items between steps.
    (Also counts the snapshots the batch could not keep: ``skipped`` is the count before it.)"""
    if labels is not None and labels.skipped != skipped:
        metrics.SNAPSHOTS_SKIPPED.inc(labels.skipped - skipped)
    if not examples:
        return
    for target in lb.TARGETS:
        batch = [ex for ex in examples if ex.target == target]
        if batch:
            out.append(("examples", (target, batch)))


def _touches_money(values: list[Any]) -> bool:
    return any(
        isinstance(v, Handover) or (isinstance(v, In) and v.event.type in ("purchase", "refund"))
        for v in values
    )


class ProfileLogic(Debounced, StatefulBatchLogic[Any, Out, Any]):
    """Profile step for one customer: ingest events, absorb hand-overs, expire on ticks."""

    def __init__(
        self,
        resume: tuple[pf.ProfileState, lb.PendingLabels, bool] | None,
        cfg: FlowConfig,
        stats: FlowStats,
    ) -> None:
        self.state: pf.ProfileState | None
        self.labels: lb.PendingLabels | None
        self.state, self.labels, self.dirty = resume if resume is not None else (None, None, False)
        self.cfg = cfg
        self.stats = stats
        self.interval = cfg.write_interval_ms / 1000

    def pending_write(self) -> SinkOp | None:
        return None if self.state is None else WriteProfile(self.state.key, self.state)

    def _tick(self, tick: Tick) -> list[lb.Example]:
        """Idle snapshots due at the tick's watermark, then the labels that matured."""
        labels, state = self.labels, self.state
        if labels is None or state is None:
            return []
        cfg, wm = self.cfg, tick.watermark
        if not cfg.models:
            return lb.on_watermark(labels, wm)
        n = len(lb.idle_days(labels, wm // lb.DAY_MS, cfg.idle_snapshot_days))
        if n:
            metrics.SNAPSHOT_IDLE.inc(n)
        return lb.on_idle(labels, wm // lb.DAY_MS, cfg.idle_snapshot_days,
                          lambda ts: state_features(state, ts), cfg.horizons, wm)  # fmt: skip

    def _expired(self, tick: Tick) -> bool:
        st = self.state
        return st is not None and pf.last_event_ts(st) + self.cfg.retention_ms <= tick.watermark

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[Iterable[Out], bool]:
        values.sort(key=lambda kv: arrival_order(kv[1]))
        out: list[Out] = []
        examples: list[lb.Example] = []
        skipped = self.labels.skipped if self.labels is not None else 0
        money = _touches_money([item for _, item in values])
        old_point = rfm_point(self.state) if money and self.state is not None else None
        changed = reproject = False
        for key, item in values:
            if isinstance(item, Reproject):
                reproject = True
                continue
            if isinstance(item, Tick):
                # labels mature in event time, returning or not
                examples.extend(self._tick(item))
                if self._expired(item):
                    _emit_examples(examples, out, self.labels, skipped)
                    return self._drop(out, old_point if money else None), DISCARD
                continue
            if self.state is None:
                self.state = pf.new_state(key)
                self.labels = lb.PendingLabels(key)
                self.stats.customers += 1
            if isinstance(item, Handover):
                pf.merge_into(self.state, item.state)
                changed = True
                continue
            changed |= self._ingest(item, out, examples)
        _emit_examples(examples, out, self.labels, skipped)
        if self.state is None:  # only ticks for a key with no profile (any more)
            return out, DISCARD
        if reproject:
            self.dirty = True
            out.extend(self.flush(force=True))
        if changed:
            self.dirty = True
            out.extend(self.flush(force=False))
            if money:
                new_point = rfm_point(self.state)
                if new_point != old_point:
                    out.append(("rfm", (old_point, new_point)))
        return out, RETAIN

    def _ingest(self, item: In, out: list[Out], examples: list[lb.Example]) -> bool:
        assert self.state is not None and self.labels is not None
        ev = item.event
        labels = self.labels
        # A training snapshot (first event of the day) describes the customer just before it.
        # Idle snapshots of the days the customer stayed away come first, from the same state.
        cfg = self.cfg
        learn = cfg.models
        feats: dict[str, float] = {}
        idle: dict[int, dict[str, float]] = {}
        if learn and lb.needs_snapshot(labels, ev.ts):
            state = self.state
            feats = state_features(state, ev.ts)
            day = ev.ts // lb.DAY_MS
            for d in lb.idle_days(labels, day, cfg.idle_snapshot_days):
                idle[d * lb.DAY_MS] = state_features(state, d * lb.DAY_MS)
        status = pf.ingest(self.state, ev, cfg.lateness_ms)
        if status == pf.APPLIED:
            if learn:
                if idle:
                    metrics.SNAPSHOT_IDLE.inc(len(idle))
                    lb.on_idle(labels, ev.ts // lb.DAY_MS, cfg.idle_snapshot_days,
                               idle.__getitem__, cfg.horizons)  # fmt: skip
                if feats:
                    metrics.SNAPSHOT_EVENT.inc()
                examples.extend(
                    lb.on_event(
                        labels, ev.ts, ev.type == "purchase", lambda: feats, self.cfg.horizons
                    )
                )
            if ev.anonymous_id is not None and ev.type in ("login", "signup"):
                pf.record_link(self.state, ev.anonymous_id, ev.customer_id or "", ev.ts,
                               ev.event_id)  # fmt: skip
            return True
        if status == pf.DUPLICATE:
            self.stats.duplicates += 1
            metrics.DUPLICATES.inc()
        else:
            out.append(("dead", late(item)))
        return False

    def _drop(self, out: list[Out], known_point: rfm.RfmPoint | None) -> list[Out]:
        assert self.state is not None
        self.stats.dropped += 1
        metrics.PROFILES_DROPPED.inc()
        point = known_point if known_point is not None else rfm_point(self.state)
        out.append(("sink", DropProfile(self.state.key)))
        if point is not None:
            out.append(("rfm", (point, None)))
        return out

    def snapshot(self) -> Any:
        state = (self.state, self.labels, self.dirty)
        return pickle.dumps(state) if self.cfg.recovery else None


#: How far behind the stream's event time the model step learns: every example whose label time
#: is older has arrived (a label matures at most a day or two after its label time; see
#: :func:`label_timers` and :func:`models.labels.on_idle`), so they can be learned in one canonical
#: order, whatever the batching.
RELEASE_LAG_MS = 3 * lb.DAY_MS


#: A held example in a heap: its learning order (unique per target), then the example.
Held = tuple[int, str, int, lb.Tied]


class ModelLogic(StatefulBatchLogic[Any, Out, Any]):
    """The one owner of a target's online model: learns every matured example (progressive
    validation: scored before learned) and checkpoints every N examples or T seconds.

    Examples are held until the customer clock's watermark (``("time", watermark)`` items, see
    :class:`ClockLogic`) is :data:`RELEASE_LAG_MS` past their label time, then learned sorted
    by (label time, customer, snapshot time); the end of the input releases the rest. So the model
    is the same however the stream was batched: a replay learns what living through it learned.
    An example that comes after its place was passed (only if the watermark was wrong) is learned
    with the next release and counted in ``nextbest_model_examples_out_of_order_total``.
    """

    def __init__(
        self,
        resume: tuple[OnlineModel | None, int, int, int, list[Held], int] | None,
        cfg: FlowConfig,
    ) -> None:
        # The builder does not learn its key: the model is made for the first example's target.
        self.model: OnlineModel | None
        self.held: list[Held]  # a heap
        if resume is not None and len(resume) == 4:  # a snapshot from before examples were held
            resume = (*resume, [], -(2**62))
        (self.model, self.version, self.since, self.newest_label_ts, self.held,
         self.released_to) = resume or (None, 0, 0, 0, [], -(2**62))  # fmt: skip
        if self.held and isinstance(self.held[0][3], lb.Example):  # a snapshot from before Tied
            self.held = [(a, b, c, lb.Tied(e)) for a, b, c, e in self.held]  # type: ignore[arg-type]
            heapq.heapify(self.held)
        self.cfg = cfg
        self.last_checkpoint = time.monotonic()

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        newest: int | None = None
        republish = False
        for kind, v in values:
            if kind == "time":  # a watermark
                newest = v if newest is None else max(newest, v)
            elif kind == "reproject":  # Redis lost the checkpoint
                republish = True
            else:
                late = sum(1 for e in v if e.label_ts < self.released_to)
                if late:
                    metrics.EXAMPLES_OUT_OF_ORDER.inc(late)
                for e in v:
                    heapq.heappush(self.held, (e.label_ts, e.key, e.snapshot_ts, lb.Tied(e)))
        if newest is not None:
            bound = newest - RELEASE_LAG_MS
            if bound > self.released_to:
                self.released_to = bound
        out = self._learn(self.released_to)
        if republish and not out:
            out = self._checkpoint()
        return out, RETAIN

    def _learn(self, bound: int | None) -> list[Out]:
        """Learn the held examples with label time before ``bound`` (all with ``None``)."""
        held = self.held
        ready: list[lb.Example] = []
        while held and (bound is None or held[0][0] < bound):
            ready.append(heapq.heappop(held)[3].example)
        if ready:
            if self.model is None:
                self.model = OnlineModel(ready[0].target, self.cfg.model_pipeline,
                                         min_examples=self.cfg.model_min_examples)  # fmt: skip
            for ex in ready:
                self.model.learn(ex)
                self.newest_label_ts = max(self.newest_label_ts, ex.label_ts)
            self.since += len(ready)
            metrics.EXAMPLES.labels(self.model.target).inc(len(ready))
        due = time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_interval_ms / 1000
        if self.since and (self.since >= self.cfg.checkpoint_every or due or bound is None):
            return self._checkpoint()
        return []

    def notify_at(self) -> datetime | None:
        if not self.since:
            return None
        wait = self.last_checkpoint + self.cfg.checkpoint_interval_ms / 1000 - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def on_notify(self) -> tuple[Iterable[Out], bool]:
        return (self._checkpoint() if self.since else []), RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return self._learn(None), RETAIN

    def _checkpoint(self) -> list[Out]:
        if self.model is None:
            return []
        self.version += 1
        self.since = 0
        self.last_checkpoint = time.monotonic()
        data = self.model.to_checkpoint(self.version, self.newest_label_ts)
        snap = self.model.metrics_snapshot()
        for name in ("roc_auc", "log_loss", "brier"):
            if snap.get(name) is not None:
                metrics.MODEL_METRIC.labels(self.model.target, name).set(snap[name])
        metrics.MODEL_DRIFTS.labels(self.model.target).set(snap.get("drifts", 0))
        return [("sink", WriteCheckpoint(self.model.target, self.version, data))]

    def snapshot(self) -> Any:
        state = (self.model, self.version, self.since, self.newest_label_ts, self.held,
                 self.released_to)  # fmt: skip
        return pickle.dumps(state) if self.cfg.recovery else None


class RfmLogic(StatefulBatchLogic[Any, Out, Any]):
    """The one owner of the RFM population: publishes quintile boundaries as customers change."""

    def __init__(self, resume: tuple[rfm.RfmPopulation, int, int] | None, cfg: FlowConfig) -> None:
        self.population, self.pending, self.newest = resume or (rfm.RfmPopulation(), 0, 0)
        self.cfg = cfg

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        republish = False
        for value in values:
            if isinstance(value, Reproject):  # Redis lost the boundaries
                republish = True
                continue
            old, new = value
            self.pending += 1
            try:
                self.population.update(old, new)
            except ValueError:  # a removal the population never saw: count it, go on
                metrics.RFM_INCONSISTENT.inc()
                continue
            if new is not None and new.last_purchase_ts > self.newest:
                self.newest = new.last_purchase_ts
        if self.pending >= self.cfg.rfm_publish_every or republish:
            return self._publish(), RETAIN
        return [], RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return (self._publish() if self.pending else []), RETAIN

    def _publish(self) -> list[Out]:
        self.pending = 0
        b = self.population.boundaries(computed_at_ms=self.newest)
        return [] if b is None else [("sink", WriteBoundaries(b.encode()))]

    def snapshot(self) -> Any:
        state = (self.population, self.pending, self.newest)
        return pickle.dumps(state) if self.cfg.recovery else None


# ---------------------------------------------------------------------------------------------
# the flow


def is_reproject(kv: Keyed) -> bool:
    """A re-projection request of the clock (for the model and RFM owners)."""
    return isinstance(kv[1][1], Reproject)


def to_model_owners(kv: Keyed) -> list[tuple[str, tuple[str, Any]]]:
    """What the customer clock tells every model owner: the watermark, or a re-projection."""
    item = kv[1][1]
    if isinstance(item, Reproject):
        return [("model:" + t, ("reproject", None)) for t in lb.TARGETS]
    return [("model:" + t, ("time", item.watermark)) for t in lb.TARGETS]


def build_flow(
    source: Source[Any],
    redis_sink: Sink[SinkOp],
    dead_letter_sink: Sink[Rejected],
    stats: FlowStats | None = None,
    to_record: Callable[[Any], RawRecord] | None = None,
    source_label: str = "file",
    config: FlowConfig | None = None,
) -> Dataflow:
    """Build the profile dataflow over any source of :class:`RawRecord` (or ``to_record`` input).

    With a :class:`~dataflows.sinks.RedisSink`, the clocks answer its re-projection requests.
    """
    stats = FlowStats() if stats is None else stats
    cfg = FlowConfig() if config is None else config
    reprojection = redis_sink.reprojection if isinstance(redis_sink, RedisSink) else None
    flow = Dataflow("nextbest-profiles")
    raw = op.input("read", flow, source)
    if to_record is not None:
        raw = op.map("to_record", raw, to_record)
    decoded = op.flat_map_batch("decode", raw, make_decoder(stats, source_label, cfg.max_future_ms))
    split = op.branch("split_rejected", decoded, is_event)
    events: Stream[In] = split.trues  # type: ignore[assignment]

    observed = op.flat_map_batch("observe_time", events, newest_ts)
    keyed = op.flat_map_batch("key_events", events, key_events)
    by_device = op.branch("split_identity", keyed, is_device_item)
    device_in: Stream[Keyed] = by_device.trues
    device_ticks = add_clock("device_clock", device_in, observed, cfg, None, reprojection)

    def build_device(resume: Any) -> DeviceLogic:
        return DeviceLogic(pickle.loads(resume) if resume else None, cfg, stats)

    device_out = op.stateful_batch(
        "identity", op.merge("device_items", device_in, device_ticks), build_device
    )
    device_flat = op.map("identity_unwrap", device_out, lambda kv: kv[1])
    routed = op.filter_map(
        "routed_to_customer", device_flat, lambda o: (o[1][0], o[1]) if o[0] == "route" else None
    )
    customer_in = op.merge("customer_items", by_device.falses, routed)
    # (label and idle timers only when the models learn)
    horizons = cfg.horizons if cfg.models else None
    clock_out = add_clock(
        "customer_clock", customer_in, observed, cfg, horizons, reprojection, owners=True
    )
    to_models = op.branch("split_model_time", clock_out, lambda kv: kv[0] == MODEL_TIME)
    customer_ticks: Stream[Keyed] = to_models.falses

    def build_profile(resume: Any) -> ProfileLogic:
        return ProfileLogic(pickle.loads(resume) if resume else None, cfg, stats)

    profile_out = op.stateful_batch(
        "profile", op.merge("profile_items", customer_in, customer_ticks), build_profile
    )
    profile_flat = op.map("profile_unwrap", profile_out, lambda kv: kv[1])

    rfm_changes = op.filter_map(
        "rfm_changes", profile_flat, lambda o: o[1] if o[0] == "rfm" else None
    )
    rfm_reproject = op.filter_map(
        "rfm_reproject", to_models.trues, lambda kv: kv[1][1] if is_reproject(kv) else None
    )
    rfm_changes = op.merge("rfm_inputs", rfm_changes, rfm_reproject)

    def build_rfm(resume: Any) -> RfmLogic:
        return RfmLogic(pickle.loads(resume) if resume else None, cfg)

    rfm_out = op.stateful_batch("rfm", op.key_on("rfm_owner", rfm_changes, lambda _: "rfm"),
                                build_rfm)  # fmt: skip
    rfm_flat = op.map("rfm_unwrap", rfm_out, lambda kv: kv[1])

    examples = op.filter_map(
        "examples", profile_flat, lambda o: o[1] if o[0] == "examples" else None
    )

    def build_model(resume: Any) -> ModelLogic:
        return ModelLogic(pickle.loads(resume) if resume else None, cfg)

    # every model owner hears the clock's event time too (to learn in a canonical order)
    model_time = op.flat_map("model_time", to_models.trues, to_model_owners)
    model_examples = op.map("model_owner", examples, lambda te: ("model:" + te[0], ("ex", te[1])))
    models_out = op.stateful_batch(
        "models", op.merge("model_inputs", model_examples, model_time), build_model
    )
    models_flat = op.map("models_unwrap", models_out, lambda kv: kv[1])

    outputs = op.merge("outputs", device_flat, profile_flat, rfm_flat, models_flat)
    sink_ops = op.filter_map("sink_ops", outputs, lambda o: o[1] if o[0] == "sink" else None)
    late_events = op.filter_map("late_events", outputs, lambda o: o[1] if o[0] == "dead" else None)

    def count_late(rej: Rejected) -> Rejected:
        stats.reject(rej.error.reason)
        return rej

    op.output(
        "dead_letter",
        op.merge("dead_letters", split.falses, op.map("count_late", late_events, count_late)),
        dead_letter_sink,
    )
    op.output("write_redis", sink_ops, redis_sink)
    return flow

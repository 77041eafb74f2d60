"""The profile step: one customer: ingest events, absorb hand-overs, expire, snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.effects import Examples, RfmChange
from dataflows.erasure import Ack, Erase
from dataflows.records import (
    NO_STREAM_TIME,
    DropProfile,
    ExitSegment,
    Handover,
    IdentifierNote,
    In,
    IndexSegment,
    LinkDevice,
    Reproject,
    SegmentEvent,
    SinkOp,
    Tick,
    WriteProfile,
    WriteSegments,
    late,
    position_key,
)
from dataflows.snapshots import ProfileSnapshot, dump
from dataflows.steps import DISCARD, RETAIN, Out
from dataflows.steps import segments as sg
from dataflows.steps.debounce import Debounced
from features import profile as pf
from features import rfm
from features.consent import allows
from features.segments import Transition
from models import labels as lb
from models.features import state_features
from schemas.consent import CONSENT
from schemas.traits import IDENTIFY


def rfm_point(state: pf.ProfileState) -> rfm.RfmPoint | None:
    """The customer's RFM point (None before the first purchase)."""
    return rfm.rfm_point(state.purchases_total, state.revenue_total, state.last_purchase_ts,
                         state.current.first_seen_ts)  # fmt: skip


def arrival_order(item: Any) -> tuple[int, str, int, int]:
    """Sort key inside one batch of a key: ticks first (time passed before these events were
    seen), then events in **arrival order** (their source position: file line, partition offset),
    a hand-over just before the linking event it came with. Items of one key can reach a step
    through different paths (direct and routed by identity) in any order within a batch; sorting
    by position restores the source's order. Lateness, duplicates and everything else are then
    decided event by event in that order, so the result does not depend on how the stream was
    cut into batches (never sort by event time here: a late event sharing a batch with newer ones
    would look in order)."""
    if isinstance(item, In):
        return (1, *position_key(item.record.position), 1)
    if isinstance(item, Handover):
        return (1, *position_key(item.position), 0)
    if isinstance(item, IdentifierNote):
        return (1, *position_key(item.position), 2)
    if isinstance(item, Reproject):
        return (2, "", 0, 0)
    if isinstance(item, Erase):
        return (1, *position_key(item.position), 1)
    return (0, "", item.watermark, 0)


def _emit_examples(
    examples: list[lb.Example], out: list[Out], labels: lb.PendingLabels | None, skipped: int
) -> None:
    """One :class:`~dataflows.effects.Examples` per target: fewer items between steps.
    (Also counts the snapshots the batch could not keep: ``skipped`` is the count before it.)"""
    if labels is not None and labels.skipped != skipped:
        metrics.SNAPSHOTS_SKIPPED.inc(labels.skipped - skipped)
    if not examples:
        return
    for target in lb.TARGETS:
        batch = [ex for ex in examples if ex.target == target]
        if batch:
            out.append(Examples(target, batch))


def _touches_money(values: list[Any]) -> bool:
    return any(
        isinstance(v, Handover) or (isinstance(v, In) and v.event.type in ("purchase", "refund"))
        for v in values
    )


class ProfileLogic(Debounced, StatefulBatchLogic[Any, Out, Any]):
    """Profile step for one customer: ingest events, absorb hand-overs, expire on ticks."""

    #: the newest tick's watermark seen since this logic was built (for
    #: ``nextbest_events_behind_clock_total``; not in the snapshot: a metric's bookkeeping)
    ticked: int = -(2**62)

    def __init__(
        self,
        resume: ProfileSnapshot | None,
        cfg: FlowConfig,
    ) -> None:
        self.state: pf.ProfileState | None
        self.labels: lb.PendingLabels | None
        snap = resume or ProfileSnapshot(None, None)
        self.state, self.labels, self.dirty = snap.state, snap.labels, snap.dirty
        self.seg: sg.SegmentState | None = snap.segments
        self.cfg = cfg
        self.interval = cfg.write_interval_ms / 1000
        self.freshness = metrics.PROFILE_FRESHNESS

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
        # the snapshot days whose 00:00 the watermark passed; none after the retention deadline
        # (the profile is dropped there; as the clock's idle timers stop there): bounds the work
        # when the watermark jumps far ahead
        before_day = min(wm, pf.last_event_ts(state) + cfg.retention_ms) // lb.DAY_MS + 1
        n = len(lb.idle_days(labels, before_day, cfg.idle_snapshot_days))
        if n:
            metrics.SNAPSHOT_IDLE.inc(n)
        return lb.on_idle(labels, before_day, cfg.idle_snapshot_days,
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
        transitions: list[Transition] = []
        for key, item in values:
            if isinstance(item, Reproject):
                reproject = True
                continue
            if isinstance(item, Tick):
                if item.watermark > self.ticked:
                    self.ticked = item.watermark
                # labels mature in event time, returning or not
                examples.extend(self._tick(item))
                if self._expired(item):
                    _emit_examples(examples, out, self.labels, skipped)
                    self._segments_gone(out, transitions)
                    return self._drop(out, old_point if money else None), DISCARD
                self._catch_up(item.watermark, transitions)
                continue
            if isinstance(item, Erase):  # forget the person; later events start a new profile
                if self.state is not None:
                    examples.clear()  # (matured in this batch: the person's)
                    self._segments_gone(out, transitions, "erasure")
                    transitions.clear()
                    self._drop(out, old_point if money else None, erased=True)
                out.append(Ack(item.request_id, item.part))
                metrics.ERASURES.labels("applied").inc()
                self.state = self.labels = self.seg = None
                self.dirty = changed = reproject = False
                old_point = None
                continue
            if self.state is None:
                self.state = pf.new_state(key)
                self.labels = lb.PendingLabels(key)
                metrics.PROFILES_CREATED.labels("customer").inc()
            if isinstance(item, Handover):
                self._catch_up(max(item.stream_wm, item.ts - 1), transitions)
                pf.merge_into(self.state, item.state, policy=self.cfg.traits)
                changed = True
                continue
            if isinstance(item, IdentifierNote):
                changed |= pf.note_conflict(self.state, item.token, item.owner, item.claimants)
                continue
            if item.event.type == CONSENT:  # decisions only: no lateness, labels or models
                self._catch_up(max(item.stream_wm, item.event.ts - 1), transitions)
                marketing = self._marketing()
                if pf.apply_consent(self.state, item.event):
                    changed = True
                    self._marketing_changed(marketing, item.event.ts, transitions)
                continue
            self._linked(item.event, out)
            if item.event.type == IDENTIFY:  # traits only: no lateness, labels or models
                self._catch_up(max(item.stream_wm, item.event.ts - 1), transitions)
                applied = pf.apply_identify(self.state, item.event, self.cfg.traits)
                metrics.TRAITS_APPLIED.labels("any" if applied else "none").inc()
                if applied:
                    changed = True
                    self._evaluate(item.event.ts, transitions)
                continue
            if item.event.ts < self.ticked:
                metrics.EVENTS_BEHIND_CLOCK.inc()
            # flips the stream has passed, or that came before this event
            self._catch_up(max(item.stream_wm, item.event.ts - 1), transitions)
            if self._ingest(item, out, examples):
                changed = True
                self.note_produced(item.record.timestamp)
                self._evaluate(item.event.ts, transitions)
        _emit_examples(examples, out, self.labels, skipped)
        if transitions:
            self._publish(out, transitions)
        if self.state is None:  # only ticks for a key with no profile (any more)
            return out, DISCARD
        if reproject:
            self.dirty = True
            out.extend(self.flush(force=True))
            if self.seg is not None and self.cfg.segments is not None:
                # the memberships and this customer's entries in every index, absolute (a server
                # back from an older state may list it where it no longer is)
                members, exits = self.seg.members(), self.seg.exits
                cid = self.state.key[2:]
                for name in sorted({*self.cfg.segments.segments.names, *members, *exits}):
                    out.append(ExitSegment(name, cid, exits.get(name)))
                    out.append(IndexSegment(name, cid, members.get(name)))
                out.append(WriteSegments(self.state.key, members))
        if changed:
            self.dirty = True
            out.extend(self.flush(force=False))
            if money:
                new_point = rfm_point(self.state)
                if new_point != old_point:
                    out.append(RfmChange(old_point, new_point))
        return out, RETAIN

    def _ingest(self, item: In, out: list[Out], examples: list[lb.Example]) -> bool:
        assert self.state is not None and self.labels is not None
        ev = item.event
        labels = self.labels
        if self.cfg.models and item.stream_wm > NO_STREAM_TIME:
            # Labels matured by the stream's watermark at this event's arrival: a function of
            # the arrival order, so a purchase late for the stream finds the same labels
            # however the ticks came (ticks only make maturity prompt for quiet customers).
            examples.extend(self._tick(Tick(item.stream_wm)))
        # The training snapshots of the customer's snapshot days up to this event's day (as of
        # 00:00 of each: the state before this event), then the event (see models.labels).
        cfg = self.cfg
        learn = cfg.models
        idle: dict[int, dict[str, float]] = {}
        upto = ev.ts // lb.DAY_MS + 1
        if learn:
            state = self.state
            for d in lb.idle_days(labels, upto, cfg.idle_snapshot_days):
                idle[d * lb.DAY_MS] = state_features(state, d * lb.DAY_MS)
        status = pf.ingest(self.state, ev, cfg.lateness_ms, consent=cfg.consent)
        if status == pf.APPLIED:
            if learn:
                if idle:
                    metrics.SNAPSHOT_EVENT.inc(len(idle))
                    lb.on_idle(labels, upto, cfg.idle_snapshot_days, idle.__getitem__,
                               cfg.horizons)  # fmt: skip
                lb.on_event(labels, ev.ts, ev.type == "purchase")
            if ev.anonymous_id is not None and ev.type in ("login", "signup"):
                pf.record_link(self.state, ev.anonymous_id, ev.customer_id or "", ev.ts,
                               ev.event_id)  # fmt: skip
            return True
        if status == pf.DUPLICATE:
            metrics.DUPLICATES.inc()
        elif status == pf.NO_CONSENT:
            metrics.EVENTS_DROPPED.labels("no_consent").inc()
        else:
            out.append(late(item))
        return False

    def _linked(self, ev: Any, out: list[Out]) -> None:
        """A login from a device, or an email or phone the customer claims: the customer's set of
        every one (what an erasure reaches). Written here, in order with the profile's own drop,
        so an erasure in the same batch cannot be overtaken by it."""
        cid = ev.customer_id
        if cid is None:
            return
        if ev.anonymous_id is not None and ev.type in ("login", "signup"):
            out.append(LinkDevice(cid, ev.anonymous_id))
        traits = ev.traits or {}
        for tok in {ev.email, ev.phone, traits.get("email"), traits.get("phone")}:
            if isinstance(tok, str):
                out.append(LinkDevice(cid, tok))

    def _marketing(self) -> bool:
        """Whether the customer allows marketing: without it, in no segment (see
        :mod:`features.consent`)."""
        st = self.state
        return st is None or allows(st.consent, "marketing", self.cfg.consent)

    def _marketing_changed(self, before: bool, ts: int, transitions: list[Transition]) -> None:
        """Marketing withdrawn: every membership exits (rule ``consent``); granted again: the
        segments are evaluated from now."""
        after, seg = self._marketing(), self.seg
        if before == after or self.cfg.segments is None:
            return
        if after:
            if seg is not None:
                seg.at = ts if seg.at is None else max(seg.at, ts)
            self._evaluate(ts, transitions)
        elif seg is not None:
            at = ts if seg.at is None else max(seg.at, ts)
            for name in sorted(seg.members()):
                transitions.append(Transition(name, "exited", at, {"rule": "consent"}))
            seg.records, seg.at = {}, at

    def _catch_up(self, until: int, transitions: list[Transition]) -> None:
        """Realise the memberships' flips by time alone up to ``until``."""
        ctx, seg, state = self.cfg.segments, self.seg, self.state
        if ctx is not None and seg is not None and state is not None and self._marketing():
            # (never past the retention deadline: the profile is dropped there; this also bounds
            # the work when the watermark jumps, e.g. after an event from the far future)
            until = min(until, pf.last_event_ts(state) + self.cfg.retention_ms)
            transitions.extend(sg.catch_up(ctx, state, seg, until))

    def _evaluate(self, ts: int, transitions: list[Transition]) -> None:
        """Step the memberships after an applied event."""
        ctx, state = self.cfg.segments, self.state
        if ctx is None or state is None or not self._marketing():
            return
        if self.seg is None:
            self.seg = sg.SegmentState()
        transitions.extend(sg.on_event(ctx, state, self.seg, ts))

    def _segments_gone(
        self, out: list[Out], transitions: list[Transition], rule: str = "retention"
    ) -> None:
        """Retention drops the profile: it leaves every segment, at its retention deadline (an
        erasure: at its newest event or flip)."""
        seg, state = self.seg, self.state
        if seg is None or state is None:
            if transitions:
                self._publish(out, transitions)
            return
        last = pf.last_event_ts(state)
        at = max(last + self.cfg.retention_ms if rule == "retention" else last, seg.at or 0)
        for name in sorted(seg.members()):
            transitions.append(Transition(name, "exited", at, {"rule": rule}))
        seg.records = {}
        if transitions:
            self._publish(out, transitions)

    def _publish(self, out: list[Out], transitions: list[Transition]) -> None:
        """The transitions, the memberships and the segment indexes that changed."""
        assert self.state is not None
        key = self.state.key
        cid = key[2:]
        members = self.seg.members() if self.seg is not None else {}
        if self.seg is not None:
            self.seg.note(transitions)
        for t in transitions:
            out.append(SegmentEvent(cid, t.segment, t.direction, t.at, t.reason))
            metrics.SEGMENT_TRANSITIONS.labels(t.segment, t.direction).inc()
        exited = {t.segment for t in transitions if t.direction == "exited"}
        for name in dict.fromkeys(t.segment for t in transitions):
            out.append(IndexSegment(name, cid, members.get(name)))
            if name in exited and self.seg is not None:
                out.append(ExitSegment(name, cid, self.seg.exits[name]))
        out.append(WriteSegments(key, members))

    def _drop(
        self, out: list[Out], known_point: rfm.RfmPoint | None, erased: bool = False
    ) -> list[Out]:
        assert self.state is not None
        if not erased:
            metrics.PROFILES_DROPPED.inc()
        point = known_point if known_point is not None else rfm_point(self.state)
        out.append(DropProfile(self.state.key))
        if self.cfg.segments is not None:  # (its exits go too: the exits index stays bounded)
            cid = self.state.key[2:]
            out.extend(ExitSegment(name, cid, None) for name in self.cfg.segments.segments.names)
        if point is not None:
            out.append(RfmChange(point, None))
        return out

    def snapshot(self) -> Any:
        if not self.cfg.recovery:
            return None
        return dump(ProfileSnapshot(self.state, self.labels, self.dirty, self.seg))

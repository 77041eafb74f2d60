"""The labelling policy in event time: unit cases and Hypothesis properties.

The properties drive the policy of :mod:`models.labels` with a reference scheduler of their own
(an :class:`EventClock` with one timer per target at :func:`next_deadline`, events permuted within
the lateness, extra watermark calls at random points) and compare with a brute-force labeller over
the whole purchase timeline. The dataflow schedules differently (per-day timers, set one batch
behind, by the clock shards): ``tests/test_labels_production.py`` drives that scheduler and the
profile step against the same brute force.
"""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from features.clock import EventClock
from models.labels import (
    DAY_MS,
    NO_DAY,
    TARGETS,
    Example,
    Horizons,
    PendingLabels,
    Snapshot,
    idle_days,
    next_deadline,
    next_snapshot_day,
    on_event,
    on_idle,
    on_watermark,
    pending_count,
)

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
H = Horizons.of_ms(churn=90 * DAY_MS, propensity=7 * DAY_MS)


def feats(ts: int) -> dict[str, float]:
    return {"ts": float(ts), "one": 1.0}


def summary(examples: list[Example]) -> list[tuple[str, int, int, int]]:
    return [(e.target, e.snapshot_ts, e.label_ts, e.label) for e in examples]


# ------------------------------------------------------------------------------------------------
# Unit cases


def test_customer_who_never_returns_matures_only_by_watermark() -> None:
    p = PendingLabels("c:5")  # snapshot days: D % 7 == 0
    assert on_event(p, T0 + 5, False) == []  # day 20454: the schedule starts
    day = next_snapshot_day("c:5", T0 // DAY_MS, 7)
    s = day * DAY_MS
    assert on_idle(p, day + 1, 7, feats, H) == []
    assert on_watermark(p, s + H.of("propensity")) == []  # ts == s + H may still arrive
    assert next_deadline(p) == s + H.of("propensity") + 1
    got = on_watermark(p, s + H.of("propensity") + 1)
    assert summary(got) == [("propensity", s, s + H.of("propensity"), 0)]
    assert got[0].features == feats(s) and got[0].key == "c:5"
    assert next_deadline(p) == s + H.of("churn") + 1
    got = on_watermark(p, s + 365 * DAY_MS)
    assert summary(got) == [("churn", s, s + H.of("churn"), 1)]
    assert next_deadline(p) is None and pending_count(p) == {"churn": 0, "propensity": 0}
    assert on_watermark(p, T0 + 999 * DAY_MS) == []


def test_a_purchase_labels_the_windows_that_hold_it_when_they_close() -> None:
    p = PendingLabels("c:5")
    on_event(p, T0, False)
    first = next_snapshot_day("c:5", T0 // DAY_MS, 7)
    on_idle(p, first + 15, 7, feats, H)  # snapshots at first, first + 7, first + 14
    snaps = [(first + k * 7) * DAY_MS for k in range(3)]
    assert on_event(p, snaps[1] + 3 * DAY_MS, True) == []  # labels only when windows close
    assert p.bought == [snaps[1] + 3 * DAY_MS]
    got = on_watermark(p, 2**62)
    # propensity: only the snapshot 3 days before (the one 10 days before is outside 7 days);
    # churn: both snapshots before; the one after the purchase did not buy
    assert sorted((e.target, e.snapshot_ts, e.label) for e in got) == [
        ("churn", snaps[0], 0), ("churn", snaps[1], 0), ("churn", snaps[2], 1),
        ("propensity", snaps[0], 0), ("propensity", snaps[1], 1), ("propensity", snaps[2], 0),
    ]  # fmt: skip
    assert all(e.label_ts == e.snapshot_ts + H.of(e.target) for e in got)
    assert p.bought == []


def test_snapshots_follow_the_schedule_not_the_events() -> None:
    """Events on a snapshot day, or many events a day, take no snapshot of their own: the
    snapshot days are the customer's grid days, taken as of 00:00 from the events before."""
    p = PendingLabels("c:5")
    calls: list[int] = []

    def at(ts: int) -> dict[str, float]:
        calls.append(ts)
        return feats(ts)

    day0 = T0 // DAY_MS
    grid = next_snapshot_day("c:5", day0, 7)
    for ts in [T0 + 2 * HOUR, T0 + 3 * HOUR, grid * DAY_MS + HOUR, grid * DAY_MS + 2 * HOUR]:
        on_idle(p, ts // DAY_MS + 1, 7, at, H)
        on_event(p, ts, False)
    assert calls == [grid * DAY_MS]  # one snapshot, at 00:00 of the grid day
    assert pending_count(p) == {"churn": 1, "propensity": 1}
    assert idle_days(p, grid + 30, 7) == [grid + 7, grid + 14, grid + 21, grid + 28]


def test_horizon_change_keeps_the_deadline_of_pending_snapshots() -> None:
    p = PendingLabels("c:5")
    on_event(p, T0, False)
    first = next_snapshot_day("c:5", T0 // DAY_MS, 7)
    on_idle(p, first + 1, 7, feats, H)
    short = Horizons.of_ms(churn=DAY_MS, propensity=HOUR)
    on_idle(p, first + 8, 7, feats, short)
    s0, s1 = first * DAY_MS, (first + 7) * DAY_MS
    assert next_deadline(p, "propensity") == s0 + 7 * DAY_MS + 1
    got = on_watermark(p, s1 + 3 * DAY_MS)
    assert summary(got) == [
        ("churn", s1, s1 + DAY_MS, 1),
        ("propensity", s0, s0 + 7 * DAY_MS, 0),
        ("propensity", s1, s1 + HOUR, 0),
    ]


def test_cap_skips_snapshots_only_when_the_watermark_stalls() -> None:
    h = Horizons.of_ms(churn=3 * DAY_MS, propensity=DAY_MS, lag=0)
    assert (h.max_pending("churn"), h.max_pending("propensity")) == (4, 2)
    p = PendingLabels("c:5")
    on_event(p, T0, False)
    on_idle(p, T0 // DAY_MS + 12, 1, lambda ts: feats(0), h)  # daily, no watermark call at all
    assert pending_count(p) == {"churn": 4, "propensity": 2}
    assert p.skipped == 7 + 9


def test_unknown_target_horizon() -> None:
    try:
        H.of("ltv")
    except ValueError as exc:
        assert "ltv" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")


def test_states_pickle_and_round_trip() -> None:
    p = PendingLabels("c:5")
    on_event(p, T0, False)
    on_idle(p, T0 // DAY_MS + 15, 7, feats, H)
    on_event(p, T0 + 9 * DAY_MS, True)
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.bought == p.bought != []
    # the restored state goes on exactly like the original
    a = on_event(p, T0 + 12 * DAY_MS, True) + on_watermark(p, T0 + 10**11)
    b = on_event(q, T0 + 12 * DAY_MS, True) + on_watermark(q, T0 + 10**11)
    assert a == b and p == q
    snap = Snapshot.of(T0, {"a": 1.5, "b": -2.0})
    assert pickle.loads(pickle.dumps(snap)) == snap and snap.features() == {"a": 1.5, "b": -2.0}
    ex = a[0]
    assert pickle.loads(pickle.dumps(ex)) == ex
    assert pickle.loads(pickle.dumps(H)) == H


# ------------------------------------------------------------------------------------------------
# Properties against a brute-force labeller


@dataclass(frozen=True)
class Ev:
    ts: int
    purchase: bool


def brute_force(
    arrival: list[Ev], h: Horizons, every: int, end_day: int, key: str = "c:7"
) -> list[tuple[str, int, int, int]]:
    """Expected (target, snapshot_ts, label_ts, label) from the whole timeline: a snapshot as of
    00:00 of each of the key's snapshot days after the first event's day, up to the last event's
    day or before ``end_day``; labelled by any purchase in ``[s, s + H]``, at ``s + H``."""
    first = arrival[0].ts // DAY_MS
    last = max(max(e.ts for e in arrival) // DAY_MS + 1, end_day)
    snaps = [d * DAY_MS for d in range(next_snapshot_day(key, first, every), last, every)]
    out = []
    for s in snaps:
        for target in TARGETS:
            horizon = h.of(target)
            bought = any(e.purchase and s <= e.ts <= s + horizon for e in arrival)
            label = int(bought) if target == "propensity" else int(not bought)
            out.append((target, s, s + horizon, label))
    return sorted(out)


# Times on a coarse grid (half hours, hours, days), so that purchases exactly at a horizon's
# end, events at the watermark and snapshots at midnight come up often.
GAPS = st.one_of(
    st.integers(0, 4).map(lambda k: k * 30 * 60_000),  # same session
    st.integers(0, 30).map(lambda k: k * HOUR),  # next day or so
    st.integers(0, 25).map(lambda k: k * DAY_MS),  # a long absence
)


@st.composite
def timelines(draw: st.DrawFn) -> tuple[list[Ev], Horizons, int]:
    lateness = draw(st.sampled_from([0, 30 * 60_000, 6 * HOUR]))
    n = draw(st.integers(1, 40))
    ts = T0 + draw(st.integers(0, 23)) * HOUR
    events = []
    for _ in range(n):
        ts += draw(GAPS)
        events.append(Ev(ts, draw(st.booleans())))
    # arrival order: sorted by ts + jitter in [0, lateness]: never late for the clock
    jitters = [draw(st.sampled_from([0, lateness // 2, lateness])) for _ in events]
    order = sorted(range(n), key=lambda i: (events[i].ts + jitters[i], i))
    h = Horizons.of_ms(
        churn=draw(st.integers(1, 20)) * DAY_MS,
        propensity=draw(st.integers(1, 120)) * HOUR,
        lag=lateness,
    )
    return [events[i] for i in order], h, lateness


def drive(
    arrival: list[Ev],
    h: Horizons,
    lateness: int,
    rng: random.Random | None,
    every: int = 7,
    end_day: int = 0,
) -> tuple[list[Example], dict[str, int]]:
    """Run the policy under the reference scheduler: clock timers (label deadlines, and the
    start of the next snapshot day), plus random extra watermark calls. The features of a
    snapshot are its time and how many events were applied before it."""
    clock = EventClock(lateness_ms=lateness)
    p = PendingLabels("c:7")
    out: list[Example] = []
    most = dict.fromkeys(TARGETS, 0)
    applied = 0

    def state_feats(ts: int) -> dict[str, float]:
        return {"ts": float(ts), "n": float(applied)}

    def set_timers() -> None:
        for t in TARGETS:
            d = next_deadline(p, t)
            if d is not None:
                clock.set_timer(p.key, f"label:{t}", d)
        if p.last_day != NO_DAY:  # the next snapshot day
            clock.set_timer(p.key, "idle", next_snapshot_day(p.key, p.last_day, every) * DAY_MS)

    def tick(watermark: int) -> None:
        nonlocal out
        matured = on_idle(p, watermark // DAY_MS + 1, every, state_feats, h, watermark)
        matured += on_watermark(p, watermark)
        assert all(x.label_ts < watermark for x in matured)
        out += matured

    for e in arrival:
        for _key, _kind, _deadline in clock.advance(e.ts):
            tick(clock.watermark)
            set_timers()
        if rng is not None and rng.random() < 0.5:
            # any watermark no later than the clock's is valid: nothing older arrives later
            tick(clock.watermark - rng.choice([0, 1, HOUR, 3 * DAY_MS]))
        on_idle(p, e.ts // DAY_MS + 1, every, state_feats, h)
        out += on_event(p, e.ts, e.purchase)
        applied += 1
        set_timers()
        for t, n in pending_count(p).items():
            most[t] = max(most[t], n)
        assert p.skipped == 0
    out += on_idle(p, end_day, every, state_feats, h, end_day * DAY_MS)
    assert p.skipped == 0
    out += on_watermark(p, 2**62)
    assert next_deadline(p) is None
    return out, most


@settings(max_examples=200, deadline=None)
@given(timelines(), st.integers(0, 2**32), st.sampled_from([1, 3, 7]))
def test_every_snapshot_gets_exactly_one_correct_label(
    case: tuple[list[Ev], Horizons, int], seed: int, every: int
) -> None:
    arrival, h, lateness = case
    got, most = drive(arrival, h, lateness, random.Random(seed), every)
    assert sorted(summary(got)) == brute_force(arrival, h, every, 0)
    for e in got:
        assert e.features["ts"] == e.snapshot_ts
        if lateness == 0:  # (in order:) the features describe the customer as of 00:00
            assert e.features["n"] == sum(1 for x in arrival if x.ts < e.snapshot_ts)
        assert e.snapshot_ts % DAY_MS == 0
    # at most one snapshot per customer, per target, per UTC day
    per_day = Counter((e.target, e.snapshot_ts // DAY_MS) for e in got)
    assert max(per_day.values(), default=1) == 1
    # bounded state: ceil((H + lag) / 1 d) + 1 pending snapshots per target
    for t in TARGETS:
        assert most[t] <= math.ceil((h.of(t) + lateness) / DAY_MS) + 1
        if lateness == 0:
            assert most[t] <= math.ceil(h.of(t) / DAY_MS) + 1


@settings(max_examples=100, deadline=None)
@given(timelines(), st.integers(0, 2**32), st.integers(0, 2**32))
def test_results_do_not_depend_on_watermark_interleaving(
    case: tuple[list[Ev], Horizons, int], seed1: int, seed2: int
) -> None:
    arrival, h, lateness = case
    only_timers, _ = drive(arrival, h, lateness, None, 1)
    a, _ = drive(arrival, h, lateness, random.Random(seed1), 1)
    b, _ = drive(arrival, h, lateness, random.Random(seed2), 1)
    key = sorted(summary(only_timers))
    assert sorted(summary(a)) == key == sorted(summary(b))


def full(examples: list[Example]) -> list[tuple[str, int, int, int, tuple[float, ...]]]:
    pairs = zip(summary(examples), examples, strict=True)
    return sorted((*s, tuple(e.features.values())) for s, e in pairs)


@settings(max_examples=150, deadline=None)
@given(timelines(), st.sampled_from([1, 3, 7]), st.integers(0, 40), st.integers(0, 2**32))
def test_idle_snapshots_are_exact_and_do_not_depend_on_tick_timing(
    case: tuple[list[Ev], Horizons, int], every: int, extra_days: int, seed: int
) -> None:
    """Snapshots after the last event too: the days the brute force expects, features as of
    their day from the events before it, one label each, whatever the extra watermark calls."""
    arrival, h, lateness = case
    end_day = max(e.ts for e in arrival) // DAY_MS + extra_days
    only_timers, most = drive(arrival, h, lateness, None, every, end_day)
    shuffled, _ = drive(arrival, h, lateness, random.Random(seed), every, end_day)
    assert full(only_timers) == full(shuffled)
    assert sorted(summary(only_timers)) == brute_force(arrival, h, every, end_day)
    per_day = Counter((e.target, e.snapshot_ts // DAY_MS) for e in only_timers)
    assert max(per_day.values(), default=1) == 1
    for e in only_timers:
        if lateness == 0:  # every event before its day, none after
            assert e.features["n"] == sum(1 for x in arrival if x.ts < e.snapshot_ts)
    for t in TARGETS:
        assert most[t] <= math.ceil((h.of(t) + lateness) / DAY_MS) + 1

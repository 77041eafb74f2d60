"""The sharded clock fires what one clock owner fires, in the same calls, and the model owners go
by the slowest shard.

The property drives the production pieces: :func:`clock_requests` condenses batches of keyed
items into per-shard requests (every shard gets every batch's newest event time), and each
shard is a :class:`ClockLogic`. A single :class:`ClockLogic` fed every timer of every batch (what
the flow did before the shards) is the reference: per call, the union of the shards' ticks must
equal its ticks, and every shard must report the event time the single owner reports.
"""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows import snapshots as sn
from dataflows.records import ClockTime, In, RawRecord, Tick
from dataflows.steps.clock import (
    CLOCK_SHARDS,
    MODEL_TIME,
    ClockLogic,
    clock_requests,
    shard_key,
    shard_of,
)
from dataflows.steps.models import ModelLogic, release_lag_ms
from features.clock import EventClock
from models import labels as lb
from schemas import Event
from tests.conftest import flow_config

CFG = flow_config(recovery=True)
DAY = lb.DAY_MS
T0 = 1_767_225_600_000
KEYS = [f"c:{i}" for i in range(40)]


def _item(key: str, ts: int, n: int) -> tuple[str, tuple[str, In]]:
    ev = Event(event_id=str(n), type="page_view", ts=ts, customer_id=key[2:])
    return key, (key, In(ev, RawRecord(b"", f"t:{n}")))


def _logic(clock: EventClock | None = None, shard: int = 0, pending: int | None = None
           ) -> ClockLogic:  # fmt: skip
    return ClockLogic(clock or EventClock(CFG.lateness_ms), True, "customer_clock",
                      CFG.horizons, CFG.idle_snapshot_days, pending, shard=shard)  # fmt: skip


def _split(out: Any) -> tuple[set[tuple[str, int]], list[int]]:
    ticks: set[tuple[str, int]] = set()
    told: list[int] = []
    for key, item in out:
        if key == MODEL_TIME:
            told.append(item.watermark)
        else:
            assert isinstance(item, Tick)
            ticks.add((key, item.watermark))
    return ticks, told


BATCHES = st.lists(
    st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 30 * DAY)), max_size=12),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(batches=BATCHES, retention_days=st.integers(1, 20))
def test_shards_fire_what_one_owner_fires(
    batches: list[list[tuple[str, int]]], retention_days: int
) -> None:
    condense = clock_requests(retention_days * DAY, CFG.horizons, CFG.idle_snapshot_days)
    single = _logic()
    shards = {shard_key(i): _logic() for i in range(CLOCK_SHARDS)}
    n = 0
    base = T0
    for batch in batches:
        items = []
        for key, dt in batch:
            n += 1
            items.append(_item(key, base + dt, n))
        base += 2 * DAY  # the stream moves on
        requests = condense(items)
        if not requests:
            continue
        timers = [t for _, (ts, _, _) in requests for t in ts]
        newest = requests[0][1][1]
        want_ticks, want_told = _split(single.on_batch([(timers, newest, 0)])[0])
        got_ticks: set[tuple[str, int]] = set()
        for key, request in requests:
            ticks, told = _split(shards[key].on_batch([request])[0])
            assert not ticks & got_ticks  # a key's timers are in one shard only
            assert all(shard_key(shard_of(k)) == key for k, _ in ticks)
            got_ticks |= ticks
            assert told == want_told
        assert got_ticks == want_ticks
    want_end, _ = _split(single.on_eof()[0])
    got_end = set().union(*(_split(s.on_eof()[0])[0] for s in shards.values()))
    assert got_end == want_end


def test_a_single_owner_snapshot_resumes_as_shard_0_and_fires_every_key() -> None:
    clock = EventClock(0)
    keys = ["c:1", "c:2", "c:3", "c:4"]
    assert len({shard_of(k) for k in keys}) > 1
    for k in keys:
        clock.set_timer(k, "retention", T0)
    old = sn.ClockSnapshot(clock, T0)
    del old.__dict__["shard"]  # what the single owner wrote (format 1)
    old.v = 1
    snap = sn.load_clock(pickle.dumps(old), 0)
    assert (snap.shard, snap.v, snap.pending) == (0, 2, T0)
    logic = _logic(snap.clock, snap.shard, snap.pending)
    out, _ = logic.on_batch([([], T0 + 10, 0)])  # one call behind: advances to T0
    assert sorted(k for k, _ in out) == keys  # every key, whatever its shard now
    out, _ = logic.on_batch([([], T0 + 20, 0)])
    assert list(out) == [(MODEL_TIME, ClockTime(0, T0))]


def _examples(label_ts: int, n: int) -> list[lb.Example]:
    return [
        lb.Example("churn", f"c:{i}", label_ts - DAY, label_ts, {"x": float(i)}, i % 2)
        for i in range(n)
    ]


def test_the_model_owner_waits_for_every_shard_and_goes_by_the_slowest() -> None:
    owner = ModelLogic(None, CFG)
    owner.on_batch([("ex", _examples(T0, 4))])
    ahead = T0 + release_lag_ms(CFG) + DAY
    owner.on_batch([("time", (i, ahead)) for i in range(CLOCK_SHARDS - 1)])
    assert len(owner.held) == 4 and owner.model is None  # one shard has not reported
    owner.on_batch([("time", (CLOCK_SHARDS - 1, T0))])  # the slowest is behind the examples
    assert len(owner.held) == 4
    owner.on_batch([("time", (CLOCK_SHARDS - 1, ahead))])
    assert owner.held == [] and owner.model is not None
    again = sn.load_model(owner.snapshot())
    assert again.told == dict.fromkeys(range(CLOCK_SHARDS), ahead) and again.v == 2

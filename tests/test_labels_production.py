"""Labels and snapshots through the production scheduler, against the brute force.

``tests/test_models_labels.py`` checks the labelling *policy* (:mod:`models.labels`) under a
reference scheduler of its own. This file drives what the dataflow runs: the clock shards
(:func:`clock_requests`, :class:`ClockLogic`: ``idle`` timers at the snapshot days and their
``label:<target>:<day>`` timers, set one call behind), the profile step (:class:`ProfileLogic`,
which takes the snapshots from the real profile state and matures labels on ticks), with the
production configuration (:meth:`Settings.flow_config`). A Bytewax round is simulated by hand:
random batch cuts, one clock call per batch with its requests and the batch's newest event time
(what one worker does: both paths of a source batch reach the clock in the same activation),
ticks delivered in the same round as the batch's events or one round later. The labels must be
exactly the brute force's (every snapshot day, one label each, none skipped), in time, and the
examples (features included) must not depend on the schedule.

Not covered here: with several workers the two paths of one batch can reach a clock shard in
two calls, and the second call's ticks could overtake that batch's events (the clock runs one
*call* behind, which is one *batch* behind only when each batch is one call). That matters only
for events older than the batch's newest minus the lateness, i.e. a backlog (README, "Scaling
out"); ``tests/test_scale_out.py`` runs the labels through two processes.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.effects import Examples
from dataflows.records import In, RawRecord, Tick
from dataflows.steps.clock import (
    CLOCK_SHARDS,
    ClockLogic,
    broadcast,
    clock_requests,
    shard_key,
)
from dataflows.steps.profile import ProfileLogic
from features.clock import EventClock
from models.labels import DAY_MS, Example, Horizons
from schemas import Event
from tests.conftest import flow_config
from tests.test_models_labels import Ev, brute_force, summary, timelines

KEY = "c:7"
OTHER = "c:other"  # the rest of the shop: keeps event time moving after c:7 stops


def _cfg(h: Horizons, lateness: int, every: int) -> Any:
    horizons = Horizons.of_ms(
        lag=lateness + 2 * DAY_MS, churn=h.of("churn"), propensity=h.of("propensity")
    )
    return flow_config(models=True, lateness_ms=lateness, idle_snapshot_days=every,
                       horizons=horizons, retention_ms=100_000 * DAY_MS)  # fmt: skip


def _stream(arrival: list[Ev], cfg: Any) -> list[tuple[str, Event]]:
    """c:7's events in their arrival order, and the rest of the shop (one event every 5 hours
    from c:7's first event until every label can mature) placed so that none of c:7's events is
    late: before c:7's next arrival only what is older than all of c:7's events still to come."""
    mine = []
    for i, e in enumerate(arrival):
        typ = "purchase" if e.purchase else "page_view"
        total = 10.0 if e.purchase else None
        mine.append(Event(event_id=f"e{i}", type=typ, ts=e.ts, customer_id="7", total=total))
    longest = max(cfg.horizons.of(t) for t in ("churn", "propensity"))
    end = max(e.ts for e in arrival) + longest + cfg.horizons.watermark_lag_ms + 3 * DAY_MS
    shop = [
        Event(event_id=f"o{n}", type="page_view", ts=t, customer_id="other")
        for n, t in enumerate(range(min(e.ts for e in arrival), end, 5 * 3_600_000))
    ]
    still_to_come = [min(e.ts for e in mine[i:]) for i in range(len(mine))]
    out: list[tuple[str, Event]] = []
    j = 0
    for i, ev in enumerate(mine):
        while j < len(shop) and shop[j].ts < still_to_come[i]:
            out.append((OTHER, shop[j]))
            j += 1
        out.append((KEY, ev))
    out += [(OTHER, ev) for ev in shop[j:]]
    return out


def _batches(stream: list[tuple[str, Event]], rng: random.Random) -> list[list[Any]]:
    """Random cuts; a batch never spans more than a day of event time (real batches span
    seconds to minutes; a batch of many days makes the profile step skip snapshots, counted)."""
    out: list[list[Any]] = []
    cur: list[Any] = []
    for n, (key, ev) in enumerate(stream):
        if cur and (rng.random() < 0.3 or abs(ev.ts - cur[0][1][1].event.ts) > DAY_MS):
            out.append(cur)
            cur = []
        cur.append((key, (key, In(ev, RawRecord(b"", f"t:{n}")))))  # arrival order
    out.append(cur)
    return out


def run(
    arrival: list[Ev], h: Horizons, lateness: int, every: int, seed: int
) -> tuple[list[Example], int, int, list[int]]:
    """Examples of c:7, snapshots skipped, the final watermark, and for each example the
    clock's watermark when it came out."""
    rng = random.Random(seed)
    cfg = _cfg(h, lateness, every)
    condense = clock_requests(cfg.retention_ms, cfg.horizons, every)
    shards = {
        shard_key(i): ClockLogic(
            EventClock(lateness), False, "customer_clock", cfg.horizons, every, shard=i
        )
        for i in range(CLOCK_SHARDS)
    }
    profile = ProfileLogic(None, cfg)
    examples: list[Example] = []
    emitted_at: list[int] = []
    carried: list[Any] = []

    def to_profile(items: list[Any]) -> None:
        mine = [item for item in items if item[0] == KEY]
        if mine:
            out, _ = profile.on_batch([item[1] for item in mine])
            for o in out:
                if isinstance(o, Examples):
                    examples.extend(o.examples)
                    emitted_at.extend([shards["clock"].clock.watermark] * len(o.examples))

    def clock_round(calls: list[list[tuple[str, Any]]]) -> list[Any]:
        ticks: list[Any] = []
        for call in calls:
            by_shard: dict[str, list[Any]] = {}
            for key, request in call:
                by_shard.setdefault(key, []).append(request)
            for key, requests in by_shard.items():
                out, _ = shards[key].on_batch(requests)
                ticks += [(k, (k, t)) for k, t in out if isinstance(t, Tick)]
        return ticks

    for batch in _batches(_stream(arrival, cfg), rng):
        requests = condense([item for item in batch if item[0] == KEY])
        observed = broadcast(max(item[1][1].event.ts for item in batch))
        # one clock call per source batch: in a worker, both paths of a batch reach the clock
        # in the same activation (see the module docstring)
        ticks = clock_round([requests + observed])
        if rng.random() < 0.5:  # the ticks reach the profile step with these events
            to_profile(carried + ticks + batch)
            carried = []
        else:  # or a round later
            to_profile(carried + batch)
            carried = ticks
    end: list[Any] = []
    for logic in shards.values():
        out, _ = logic.on_eof()
        end += [(k, (k, t)) for k, t in out if isinstance(t, Tick)]
    to_profile(carried + end)
    watermarks = {logic.clock.watermark for logic in shards.values()}
    assert len(watermarks) == 1
    assert profile.labels is not None
    return examples, profile.labels.skipped, watermarks.pop(), emitted_at


def _full(examples: list[Example]) -> list[tuple[Any, ...]]:
    return sorted(
        (e.target, e.snapshot_ts, e.label_ts, e.label, tuple(e.features.items())) for e in examples
    )


# (derandomized: the same 60 cases every run; the one known failing case, found by a random
# run, is pinned below as a strict xfail until it is fixed)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(timelines(), st.sampled_from([1, 3, 7]), st.integers(0, 2**32), st.integers(0, 2**32))
def test_production_labels_equal_the_brute_force_whatever_the_schedule(
    case: tuple[list[Ev], Horizons, int], every: int, seed1: int, seed2: int
) -> None:
    arrival, h, lateness = case
    got, skipped, watermark, emitted_at = run(arrival, h, lateness, every, seed1)
    assert skipped == 0
    # in time: a label matures at most a day after its horizon (timers at the end of a snapshot
    # day), and the clock runs a batch behind (a batch spans at most a day, plus the 5 h gap
    # between the shop's events), its ticks maybe another batch behind
    for e, at in zip(got, emitted_at, strict=True):
        assert at <= e.label_ts + 4 * DAY_MS + lateness, (e, at)
    expected = [
        x
        for x in brute_force(arrival, h, every, end_day=watermark // DAY_MS + 1)
        if x[2] < watermark  # matured by the end: resolved by a purchase, or horizon passed
    ]
    assert sorted(summary(got)) == expected
    assert max(Counter((e.target, e.snapshot_ts // DAY_MS) for e in got).values(), default=1) == 1
    again, _, _, _ = run(arrival, h, lateness, every, seed2)
    assert _full(again) == _full(got)


def test_labels_in_time_for_a_new_customer_whose_first_batch_spans_its_snapshot_day() -> None:
    """Found by a random run (session 8): a new customer's two events at 22:00 and 00:00, its
    snapshot day, in one batch, then quiet. The profile step took that day's snapshot at the
    second event, but the clock, told only the newest event, never had the idle timer that sets
    the day's label timers: the labels matured only at the end of the input, 5 days late. The
    clock request now carries the idle timer after the key's oldest event of the batch too."""
    arrival = [Ev(ts=1_768_860_000_000, purchase=False), Ev(ts=1_768_867_200_000, purchase=False)]
    h = Horizons(by_target=(("churn", DAY_MS), ("propensity", 3_600_000)), watermark_lag_ms=0)
    got, _, _, emitted_at = run(arrival, h, 0, 7, 0)
    for e, at in zip(got, emitted_at, strict=True):
        assert at <= e.label_ts + 4 * DAY_MS, (e, at)

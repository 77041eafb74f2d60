"""The labelling policy, in event time: when training examples are taken and when they mature.

Targets
-------
* ``churn``: no purchase in the next ``H_c`` (default 90 days) → label 1, else 0.
* ``propensity``: at least one purchase in the next ``H_p`` (default 7 days) → label 1, else 0.

"In the next H" after a snapshot taken at ``s`` means a purchase with ``s <= ts <= s + H``
(the snapshot's own event counts: the features describe the customer just *before* it).

Snapshots
---------
A snapshot (the features of a customer at a moment) is taken at the **first applied event of a
customer in each UTC day** of event time: the first event, in processing order, whose UTC day
(``ts // 86_400_000``) is later than the day of the previous snapshot. So there is at most one
snapshot per customer, per target, per day, and a late event of an earlier day never takes one.
A customer who stops coming would then never be seen by the models as the long-inactive customer
they are when they are scored, so there are also **idle snapshots** (:func:`on_idle`): for each
UTC day ``D = last_day + k * every`` (``k >= 1``, default ``every`` = 7 days) before the day of the
customer's next snapshot, one snapshot *as of* the start of ``D`` (``ts = D * 86_400_000``). It is
taken as soon as it is known that the customer stayed away that day: when their next event (of a
later day) arrives, before it is applied, or when the watermark passes the end of day ``D``,
whichever comes first. Either way the state then holds exactly the events up to ``last_day``, so the
same snapshots come out however the clock's ticks interleave with the events (given no event older
than the watermark). Still at most one snapshot per customer per day.

Each snapshot is pending for both targets until it gets its label:

* a **purchase** at ``t`` resolves every pending snapshot ``s`` with ``s <= t <= s + H``: label 1
  for ``propensity``, 0 for ``churn``, ``label_ts = t`` (it matures now);
* the **watermark** passing ``s + H`` (``watermark > s + H``, so that an event at exactly
  ``s + H``, which the clock still accepts, is not missed) matures it without a purchase: label 0
  for ``propensity``, 1 for ``churn``, ``label_ts = s + H``. This is how customers who never
  return get their labels. In the dataflow the clock sets, per snapshot day ``D`` and target, a
  timer at the end of ``D`` + ``H`` + 1 ms (``dataflows.steps.clock.label_timers``: no earlier
  than any snapshot of that day matures, so a label matures at most a day late), and the profile
  step calls :func:`on_idle` and :func:`on_watermark` with the tick's watermark. Any scheduler
  that calls them with a valid watermark gives the same labels (:func:`next_deadline` is the
  earliest deadline, for a per-target timer).

With a valid watermark (no event older than it is applied afterwards) each snapshot gets exactly
one label per target, equal to what the whole history says, however often and wherever the
watermark calls fall. A purchase applied after its snapshot already matured (an event older than
the clock's watermark, i.e. late for the clock) cannot change that label: the dataflow should
treat such events as late.

Bounds
------
The pending snapshots of a target all lie in ``[watermark - H, newest event]``, so a target holds
at most ``ceil((H + lag) / 1 day) + 1`` of them, where ``lag`` is how far the last watermark
given to :func:`on_watermark` may trail the customer's newest event: the clock's lateness, plus
any delay in firing the timers (timers aligned to the end of a UTC day add up to a day).
``ceil(H / 1 day) + 1`` with no lag; 92 for churn and 9 for propensity with a lag up to a day.
:class:`Horizons` ``.watermark_lag_ms`` (default one day) sets that hard cap; a snapshot that
would exceed it (only if the watermark calls stall) is not kept for that target and counted in
:attr:`PendingLabels.skipped` (worth a metric: it should stay 0).

Examples
--------
>>> DAY = 86_400_000
>>> h = Horizons.of_ms(churn=90 * DAY, propensity=7 * DAY)
>>> p = PendingLabels("c:42")
>>> feats = lambda: {"x": 1.0}
>>> on_event(p, 10 * DAY + 5, False, feats, h)            # first event of day 10: snapshot
[]
>>> on_event(p, 10 * DAY + 9, False, feats, h)            # same day: no snapshot
[]
>>> next_deadline(p) == 17 * DAY + 6, pending_count(p)
(True, {'churn': 1, 'propensity': 1})
>>> [(e.target, e.label) for e in on_watermark(p, 17 * DAY + 6)]
[('propensity', 0)]
>>> on_event(p, 20 * DAY + 1, False, feats, h)            # day 20: snapshot
[]
>>> [(e.target, e.snapshot_ts // DAY, e.label) for e in on_event(p, 21 * DAY, True, feats, h)]
[('churn', 10, 0), ('churn', 20, 0), ('churn', 21, 0), ('propensity', 20, 1), ('propensity', 21, 1)]
>>> pending_count(p), next_deadline(p)
({'churn': 0, 'propensity': 0}, None)
>>> on_event(p, 22 * DAY, False, feats, h)                # a customer who never returns ...
[]
>>> [(e.target, e.label, e.label_ts // DAY) for e in on_watermark(p, 200 * DAY)]
[('churn', 1, 112), ('propensity', 0, 29)]
>>> on_idle(p, 37, 7, lambda ts: {"x": 2.0}, h)   # day 36 is over: idle snapshots, days 29, 36
[]
>>> next_deadline(p) == 36 * DAY + 1, p.last_day
(True, 36)

The data (:class:`Horizons`, :class:`PendingLabels`, :class:`Snapshot`, :class:`Example`) is
defined in :mod:`models.pending` and re-exported here, under whose name it pickles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from models.pending import (
    DAY_MS,
    DEFAULT_HORIZONS,
    NO_DAY,
    TARGETS,
    Example,
    Horizons,
    Pending,
    PendingLabels,
    Snapshot,
)
from models.pending import Tied as Tied
from models.targets import REGISTRY

__all__ = [
    "DAY_MS",
    "DEFAULT_HORIZONS",
    "TARGETS",
    "Example",
    "Horizons",
    "PendingLabels",
    "Snapshot",
    "idle_days",
    "needs_snapshot",
    "next_deadline",
    "on_event",
    "on_idle",
    "on_watermark",
    "pending_count",
]

#: Per target: (label when a purchase falls in the window, label when the horizon passes).
_RULES: Final = {t.name: (t.on_purchase, t.on_horizon) for t in REGISTRY}


def needs_snapshot(p: PendingLabels, event_ts: int) -> bool:
    """Whether an applied event at ``event_ts`` would take a snapshot (first event of its day).

    Lets the caller compute the features (as of ``event_ts``, from the state *before* the event)
    only when they are needed, before it applies the event.

    >>> p = PendingLabels("c:1")
    >>> needs_snapshot(p, 5), needs_snapshot(p, -5)
    (True, True)
    """
    return event_ts // DAY_MS > p.last_day


def _example(target: str, key: str, snap: Snapshot, label_ts: int, label: int) -> Example:
    return Example(target, key, snap.ts, label_ts, snap.features(), label)


def on_event(
    p: PendingLabels,
    event_ts: int,
    is_purchase: bool,
    features_at: Callable[[], Mapping[str, float]],
    horizons: Horizons = DEFAULT_HORIZONS,
) -> list[Example]:
    """Account for one applied event of the customer: maybe snapshot, maybe resolve.

    Call it for every event the profile step *applied* to a customer's state (not for
    duplicates or late events, and not for anonymous profiles, which cannot purchase).

    Parameters
    ----------
    p
        The customer's pending labels, updated in place.
    event_ts
        The event's time (epoch ms).
    is_purchase
        Whether the event is a purchase.
    features_at
        Returns the customer's features as of ``event_ts`` computed from the state *before* the
        event was applied; called only when a snapshot is taken. Since whether an event applies
        is known only after ``ingest``, compute them beforehand when :func:`needs_snapshot`
        says so, and pass a closure returning them::

            feats = feature_vector(view(state), ev.ts) if needs_snapshot(p, ev.ts) else None
            if ingest(state, ev, lateness) == APPLIED:
                examples = on_event(p, ev.ts, ev.type == "purchase", lambda: feats, horizons)
    horizons
        The horizons for a new snapshot (pending ones keep the deadline they were given).

    Returns
    -------
    list[Example]
        The examples that matured now (a purchase resolves the pending snapshots whose window
        holds it), ordered by target then snapshot time.

    Examples
    --------
    >>> p = PendingLabels("c:1")
    >>> [(e.target, e.label) for e in on_event(p, 0, True, lambda: {"x": 0.0})]
    [('churn', 0), ('propensity', 1)]
    """
    out: list[Example] = []
    day = event_ts // DAY_MS
    if day > p.last_day:
        p.last_day = day
        _take(p, Snapshot.of(event_ts, features_at()), horizons)
    if is_purchase:
        for target in TARGETS:
            lst = p.pending[target]
            if not lst:
                continue
            label = _RULES[target][0]
            keep: list[Pending] = []
            for entry in lst:
                deadline, snap = entry
                if snap.ts <= event_ts < deadline:
                    out.append(_example(target, p.key, snap, event_ts, label))
                else:
                    keep.append(entry)
            if len(keep) != len(lst):
                p.pending[target] = keep
    return out


def _take(p: PendingLabels, snap: Snapshot, horizons: Horizons) -> None:
    for target in TARGETS:
        lst = p.pending[target]
        if len(lst) >= horizons.max_pending(target):
            p.skipped += 1
            continue
        lst.append((snap.ts + horizons.of(target) + 1, snap))


def idle_days(p: PendingLabels, before_day: int, every_days: int) -> list[int]:
    """The idle snapshot days before ``before_day`` not taken yet (see "Snapshots" above).

    >>> p = PendingLabels("c:1")
    >>> idle_days(p, 100, 7)                                  # never seen: none
    []
    >>> _ = on_event(p, 3 * DAY_MS + 5, False, lambda: {"x": 0.0})
    >>> idle_days(p, 10, 7), idle_days(p, 11, 7), idle_days(p, 25, 7), idle_days(p, 25, 0)
    ([], [10], [10, 17, 24], [])
    """
    if every_days <= 0 or p.last_day == NO_DAY:
        return []
    return list(range(p.last_day + every_days, before_day, every_days))


def on_idle(
    p: PendingLabels,
    before_day: int,
    every_days: int,
    features_at: Callable[[int], Mapping[str, float]],
    horizons: Horizons = DEFAULT_HORIZONS,
    watermark_ms: int | None = None,
) -> list[Example]:
    """Take the idle snapshots of the days before ``before_day`` (see "Snapshots" above).

    Parameters
    ----------
    p
        The customer's pending labels, updated in place.
    before_day
        A UTC day the customer is known to have stayed away until: the day of their next event
        (call this before applying it), or ``watermark // 86_400_000`` on a clock tick (the days
        before it are over).
    every_days
        Days between idle snapshots (``<= 0``: none).
    features_at
        The customer's features as of a time (epoch ms, the start of an idle day), computed from
        the state without the next event, e.g. ``lambda ts: state_features(state, ts)``.
    horizons
        The horizons for the new snapshots.
    watermark_ms
        The watermark, when known (a clock tick): what it matures is matured before each
        snapshot is taken, so a long absence never meets the cap of pending snapshots.

    Returns
    -------
    list[Example]
        With ``watermark_ms``, the examples :func:`on_watermark` matured on the way (the new
        snapshots included). The snapshots taken are those of :func:`idle_days`; a customer with
        no snapshot yet gets none: the first comes with an event.

    Examples
    --------
    >>> p = PendingLabels("c:1")
    >>> _ = on_event(p, 3 * DAY_MS + 5, False, lambda: {"x": 0.0})
    >>> on_idle(p, 10, 7, lambda ts: {}), on_idle(p, 11, 7, lambda ts: {"x": ts / DAY_MS})
    ([], [])
    >>> p.last_day, pending_count(p), p.pending["churn"][-1][1].features()
    (10, {'churn': 2, 'propensity': 2}, {'x': 10.0})
    >>> got = on_idle(p, 30, 7, lambda ts: {}, watermark_ms=30 * DAY_MS)
    >>> [(e.target, e.snapshot_ts // DAY_MS) for e in got]
    [('propensity', 3), ('propensity', 10), ('propensity', 17)]
    """
    out: list[Example] = []
    if watermark_ms is not None:
        out += on_watermark(p, watermark_ms)
    for day in idle_days(p, before_day, every_days):
        p.last_day = day
        _take(p, Snapshot.of(day * DAY_MS, features_at(day * DAY_MS)), horizons)
        if watermark_ms is not None:
            out += on_watermark(p, watermark_ms)
    return out


def on_watermark(p: PendingLabels, watermark_ms: int) -> list[Example]:
    """Mature the snapshots whose horizon passed without a purchase.

    Parameters
    ----------
    p
        The customer's pending labels, updated in place.
    watermark_ms
        The event-time watermark: no event older than it will be applied any more.

    Returns
    -------
    list[Example]
        One example per snapshot with ``deadline <= watermark_ms`` (``propensity`` → 0,
        ``churn`` → 1, ``label_ts = snapshot_ts + H``), ordered by target then snapshot time.
        Calling it again, or with an older watermark, returns nothing new.

    Examples
    --------
    >>> p = PendingLabels("c:1")
    >>> _ = on_event(p, 0, False, lambda: {"x": 0.0}, Horizons.of_ms(churn=10, propensity=5))
    >>> on_watermark(p, 5), [(e.target, e.label, e.label_ts) for e in on_watermark(p, 6)]
    ([], [('propensity', 0, 5)])
    """
    out: list[Example] = []
    for target in TARGETS:
        lst = p.pending[target]
        if not lst or min(d for d, _ in lst) > watermark_ms:
            continue
        label = _RULES[target][1]
        keep: list[Pending] = []
        for entry in lst:
            deadline, snap = entry
            if deadline <= watermark_ms:
                out.append(_example(target, p.key, snap, deadline - 1, label))
            else:
                keep.append(entry)
        p.pending[target] = keep
    return out


def next_deadline(p: PendingLabels, target: str | None = None) -> int | None:
    """The earliest watermark at which a pending snapshot matures (``None``: nothing pending).

    Parameters
    ----------
    p
        The customer's pending labels.
    target
        Only this target's snapshots (``None``: all targets). Per target, the deadline never
        moves back when new snapshots come, so a per-target timer kind (e.g.
        ``f"label:{target}"``) suits :class:`features.clock.EventClock`, whose ``set_timer``
        keeps the later deadline of a ``(key, kind)``.

    Examples
    --------
    >>> p = PendingLabels("c:1")
    >>> next_deadline(p) is None
    True
    >>> _ = on_event(p, 0, False, lambda: {}, Horizons.of_ms(churn=10, propensity=5))
    >>> next_deadline(p), next_deadline(p, "churn")
    (6, 11)
    """
    targets = TARGETS if target is None else (target,)
    best: int | None = None
    for t in targets:
        lst = p.pending.get(t)
        if lst:
            d = min(d for d, _ in lst)
            if best is None or d < best:
                best = d
    return best


def pending_count(p: PendingLabels) -> dict[str, int]:
    """Number of pending snapshots per target.

    >>> pending_count(PendingLabels("c:1"))
    {'churn': 0, 'propensity': 0}
    """
    return {t: len(p.pending.get(t, ())) for t in TARGETS}

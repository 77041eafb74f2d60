"""The labelling policy, in event time: when training examples are taken and when they mature.

Targets
-------
* ``churn``: no purchase in the next ``H_c`` (default 90 days) → label 1, else 0.
* ``propensity``: at least one purchase in the next ``H_p`` (default 7 days) → label 1, else 0.

"In the next H" after a snapshot taken at ``s`` means a purchase with ``s <= ts <= s + H``.

Snapshots: on a schedule, never chosen by the outcome
-----------------------------------------------------
A snapshot (the features of a customer at a moment) is taken *as of the start* (00:00 UTC) of the
customer's **snapshot days**: every ``every`` days (default 7, ``NEXTBEST_IDLE_SNAPSHOT_DAYS``) on
a grid of its own (:func:`snapshot_phase`: the days ``D`` with ``D % every`` equal to a stable
hash of the key, so the snapshots of many customers spread over the week), from the day after
its first event until it is dropped, **whether or not the customer has events that day**. The
features describe the customer as of 00:00 of ``D``: the state holds exactly the events before
that day. It is taken as soon as that is known: when the customer's first event at or after
00:00 of ``D`` arrives (before it is applied) or when the watermark passes 00:00 of ``D``,
whichever comes first (:func:`on_idle`). Either way the state holds the same events, so the same
snapshots come out however the clock's ticks interleave with the events (given no event older
than the watermark); an event older than 00:00 of ``D`` that arrives after the snapshot was
taken (late, within the allowed lateness) is not in it.

Why a schedule: a snapshot taken *because* of an event — the first event of a day, as before —
is chosen by the outcome. In a purchase-only history every such snapshot is taken at a purchase,
so its churn label is always 0, and the only examples with a long time since the last purchase
are customers who came back: the model learned that a long absence means *no* churn (measured on
the ``purchases`` scenario: churn AUC 0.72 against 0.79 for recency alone). On a schedule, which
snapshots exist does not depend on what the customer does next.

Labels: given when the window closes
------------------------------------
Each snapshot is pending for both targets until its window ``[s, s + H]`` has closed, i.e. until
the **watermark** passes ``s + H`` (``watermark > s + H``, so an event at exactly ``s + H``, which
the clock still accepts, is not missed): then its label is ``on_purchase`` (0 for churn, 1 for
propensity) if a purchase fell in the window, else ``on_horizon``, with ``label_ts = s + H``. A
purchase only marks the window (:attr:`PendingLabels.bought`); it does not label early. So the
models learn every example at ``s + H``, in the order of the snapshots: when labels were given at
the purchase, the examples "bought again" were learned up to ``H`` earlier than the examples
"did not" of the same snapshots, and a model learning online ended each day trained on the
recent returns only (a growing share of the latest examples were returns of long-absent
customers: the inversion above, again). In the dataflow the clock sets, per snapshot day ``D``
and target, a timer at the end of ``D`` + ``H`` + 1 ms (``dataflows.steps.clock.label_timers``:
no earlier than any snapshot of that day matures, so a label matures at most a day late), and the
profile step calls :func:`on_idle` and :func:`on_watermark` with the tick's watermark. Any
scheduler that calls them with a valid watermark gives the same labels (:func:`next_deadline` is
the earliest deadline, for a per-target timer).

With a valid watermark (no event older than it is applied afterwards) each snapshot gets exactly
one label per target, equal to what the whole history says, however often and wherever the
watermark calls fall. A purchase applied after its snapshot already matured (an event older than
the clock's watermark, i.e. late for the clock) cannot change that label: the dataflow should
treat such events as late.

Bounds
------
The pending snapshots of a target all lie in ``[watermark - H, newest event]``, so a target holds
at most ``ceil((H + lag) / every) + 1`` of them, where ``lag`` is how far the last watermark
given to :func:`on_watermark` may trail the customer's newest event; the hard cap is computed for
daily snapshots (``ceil((H + lag) / 1 day) + 1``, :meth:`Horizons.max_pending`, with ``lag`` =
:class:`Horizons` ``.watermark_lag_ms``, default one day): a snapshot that would exceed it (only
if the watermark calls stall) is not kept for that target and counted in
:attr:`PendingLabels.skipped` (worth a metric: it should stay 0). ``bought`` keeps only the
purchases at or after the oldest pending snapshot.

Examples
--------
>>> DAY = 86_400_000
>>> h = Horizons.of_ms(churn=90 * DAY, propensity=7 * DAY)
>>> p = PendingLabels("c:42")
>>> snapshot_phase("c:42", 7)                             # its snapshot days: D % 7 == 5
5
>>> on_event(p, 10 * DAY + 5, False)                      # first event, day 10: the grid starts
[]
>>> on_idle(p, 13, 7, lambda ts: {"x": 1.0}, h)           # day 12 (00:00) is past: snapshot
[]
>>> p.last_day, next_deadline(p) == 12 * DAY + 7 * DAY + 1
(12, True)
>>> on_event(p, 14 * DAY, True)                           # a purchase: marks the windows
[]
>>> [(e.target, e.label, e.label_ts // DAY) for e in on_watermark(p, 20 * DAY)]
[('propensity', 1, 19)]
>>> on_idle(p, 30, 7, lambda ts: {"x": 2.0}, h)           # days 19 and 26
[]
>>> [(e.target, e.snapshot_ts // DAY, e.label) for e in on_watermark(p, 200 * DAY)]
[('churn', 12, 0), ('churn', 19, 1), ('churn', 26, 1), ('propensity', 19, 0), ('propensity', 26, 0)]
>>> pending_count(p), p.bought
({'churn': 0, 'propensity': 0}, [])

The data (:class:`Horizons`, :class:`PendingLabels`, :class:`Snapshot`, :class:`Example`) is
defined in :mod:`models.pending` and re-exported here, under whose name it pickles.
"""

from __future__ import annotations

import zlib
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
    "NO_DAY",
    "TARGETS",
    "Example",
    "Horizons",
    "PendingLabels",
    "Snapshot",
    "idle_days",
    "next_deadline",
    "next_snapshot_day",
    "on_event",
    "on_idle",
    "on_watermark",
    "pending_count",
    "snapshot_phase",
]

#: Per target: (label when a purchase falls in the window, label when the horizon passes).
_RULES: Final = {t.name: (t.on_purchase, t.on_horizon) for t in REGISTRY}


def snapshot_phase(key: str, every_days: int) -> int:
    """The customer's snapshot days are the days ``D`` with ``D % every_days`` equal to this (a
    stable hash of the key: the same in every process).

    >>> snapshot_phase("c:42", 7), snapshot_phase("c:5", 7), snapshot_phase("c:5", 1)
    (5, 0, 0)
    """
    return zlib.crc32(key.encode()) % every_days if every_days > 0 else 0


def next_snapshot_day(key: str, after_day: int, every_days: int) -> int:
    """The customer's first snapshot day after ``after_day``.

    >>> [next_snapshot_day(k, d, 7) for k, d in (("c:5", 3), ("c:5", 7), ("c:42", 7))]
    [7, 14, 12]
    """
    phase = snapshot_phase(key, every_days)
    return after_day + 1 + (phase - after_day - 1) % max(1, every_days)


def _example(target: str, key: str, snap: Snapshot, label_ts: int, label: int) -> Example:
    return Example(target, key, snap.ts, label_ts, snap.features(), label)


def on_event(p: PendingLabels, event_ts: int, is_purchase: bool) -> list[Example]:
    """Account for one applied event of the customer: the first starts the snapshot schedule; a
    purchase marks the windows of the pending snapshots it falls in (labelled when they close).

    Call it for every event the profile step *applied* to a customer's state (not for
    duplicates or late events, and not for anonymous profiles, which cannot purchase), after
    :func:`on_idle` took the snapshots due before it.

    Returns
    -------
    list[Example]
        Nothing: labels are given when a window closes (:func:`on_watermark`); kept as a list
        for the callers.

    Examples
    --------
    >>> p = PendingLabels("c:5")
    >>> on_event(p, 3 * DAY_MS + 5, True), p.last_day, p.bought    # nothing pending: not kept
    ([], 3, [])
    """
    if p.last_day == NO_DAY:
        p.last_day = event_ts // DAY_MS
    if is_purchase:
        for target in TARGETS:
            lst = p.pending[target]
            if any(snap.ts <= event_ts < deadline for deadline, snap in lst):
                p.bought.append(event_ts)
                break
    return []


def _take(p: PendingLabels, snap: Snapshot, horizons: Horizons) -> None:
    for target in TARGETS:
        lst = p.pending[target]
        if len(lst) >= horizons.max_pending(target):
            p.skipped += 1
            continue
        lst.append((snap.ts + horizons.of(target) + 1, snap))


def idle_days(p: PendingLabels, before_day: int, every_days: int) -> list[int]:
    """The snapshot days before ``before_day`` not taken yet (see "Snapshots" above): the days of
    the customer's grid after ``last_day`` (the last snapshot, or the first event).

    >>> p = PendingLabels("c:5")                                 # phase 0 of 7
    >>> idle_days(p, 100, 7)                                     # never seen: none
    []
    >>> _ = on_event(p, 3 * DAY_MS + 5, False)
    >>> idle_days(p, 7, 7), idle_days(p, 8, 7), idle_days(p, 29, 7), idle_days(p, 25, 0)
    ([], [7], [7, 14, 21, 28], [])
    """
    if every_days <= 0 or p.last_day == NO_DAY:
        return []
    return list(range(next_snapshot_day(p.key, p.last_day, every_days), before_day, every_days))


def on_idle(
    p: PendingLabels,
    before_day: int,
    every_days: int,
    features_at: Callable[[int], Mapping[str, float]],
    horizons: Horizons = DEFAULT_HORIZONS,
    watermark_ms: int | None = None,
) -> list[Example]:
    """Take the snapshots of the days before ``before_day`` (see "Snapshots" above).

    Parameters
    ----------
    p
        The customer's pending labels, updated in place.
    before_day
        The day after the last snapshot day whose start is past: the day of the customer's next
        event + 1 (call this before applying it), or ``watermark // 86_400_000 + 1`` on a clock
        tick.
    every_days
        Days between idle snapshots (``<= 0``: none).
    features_at
        The customer's features as of a time (epoch ms, the start of a snapshot day), computed
        from the state without the next event, e.g. ``lambda ts: state_features(state, ts)``.
    horizons
        The horizons for the new snapshots.
    watermark_ms
        The watermark, when known (a clock tick): what it matures is matured before each
        snapshot is taken, so a long absence never meets the cap of pending snapshots.

    Returns
    -------
    list[Example]
        With ``watermark_ms``, the examples :func:`on_watermark` matured on the way (the new
        snapshots included). The snapshots taken are those of :func:`idle_days`; a customer
        never seen gets none (the schedule starts with the first event).

    Examples
    --------
    >>> p = PendingLabels("c:5")                                 # phase 0 of 7
    >>> _ = on_event(p, 3 * DAY_MS + 5, False)
    >>> on_idle(p, 7, 7, lambda ts: {}), on_idle(p, 8, 7, lambda ts: {"x": ts / DAY_MS})
    ([], [])
    >>> p.last_day, pending_count(p), p.pending["churn"][-1][1].features()
    (7, {'churn': 1, 'propensity': 1}, {'x': 7.0})
    >>> got = on_idle(p, 31, 7, lambda ts: {}, watermark_ms=30 * DAY_MS)
    >>> [(e.target, e.snapshot_ts // DAY_MS) for e in got]
    [('propensity', 7), ('propensity', 14), ('propensity', 21)]
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
    """Label the snapshots whose window closed.

    Parameters
    ----------
    p
        The customer's pending labels, updated in place.
    watermark_ms
        The event-time watermark: no event older than it will be applied any more.

    Returns
    -------
    list[Example]
        One example per snapshot with ``deadline <= watermark_ms``: ``on_purchase`` (``churn``
        0, ``propensity`` 1) if a purchase fell in its window, else ``on_horizon``;
        ``label_ts = snapshot_ts + H``; ordered by target then snapshot time. Calling it again,
        or with an older watermark, returns nothing new.

    Examples
    --------
    >>> p = PendingLabels("c:5")
    >>> _ = on_event(p, 0, False)
    >>> _ = on_idle(p, 8, 7, lambda ts: {"x": 0.0}, Horizons.of_ms(churn=10, propensity=5))
    >>> _ = on_event(p, 7 * DAY_MS + 7, True)                  # in churn's window only
    >>> on_watermark(p, 7 * DAY_MS + 5), [(e.target, e.label) for e in on_watermark(p, 10**12)]
    ([], [('churn', 0), ('propensity', 0)])
    """
    out: list[Example] = []
    bought = p.bought
    for target in TARGETS:
        lst = p.pending[target]
        if not lst or min(d for d, _ in lst) > watermark_ms:
            continue
        on_purchase, on_horizon = _RULES[target]
        keep: list[Pending] = []
        for entry in lst:
            deadline, snap = entry
            if deadline <= watermark_ms:
                hit = any(snap.ts <= t < deadline for t in bought)
                out.append(_example(target, p.key, snap, deadline - 1,
                                    on_purchase if hit else on_horizon))  # fmt: skip
            else:
                keep.append(entry)
        p.pending[target] = keep
    if bought:
        oldest = min((snap.ts for lst in p.pending.values() for _, snap in lst), default=None)
        p.bought = [] if oldest is None else [t for t in bought if t >= oldest]
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
    >>> p = PendingLabels("c:5")
    >>> next_deadline(p) is None
    True
    >>> _ = on_event(p, 0, False)
    >>> _ = on_idle(p, 8, 7, lambda ts: {}, Horizons.of_ms(churn=10, propensity=5))
    >>> next_deadline(p) - 7 * DAY_MS, next_deadline(p, "churn") - 7 * DAY_MS
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

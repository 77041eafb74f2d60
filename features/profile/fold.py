"""Folding events into a profile state in event-time order: ingest (lateness, duplicates, the
buffer) and identity links. Which series an event type adds to comes from
:mod:`features.registry`; merging an anonymous history is in :mod:`features.profile.merge`."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from itertools import chain
from typing import Final

from features import interest as _interest
from features.consent import ALL_GRANTED, ConsentDefaults, allows
from features.profile.sources import apply_consent, apply_identify
from features.profile.state import (
    _BUFFER_CAP,
    _PRUNE_EVERY_MS,
    _PRUNE_SEEN_EVERY_MS,
    _PRUNE_SESSIONS_EVERY_MS,
    APPLIED,
    BOUGHT_PRODUCTS,
    CART_PRODUCTS,
    DEDUP_MS,
    DUPLICATE,
    LATE,
    NO_CONSENT,
    SESSION_GAP_MS,
    SESSION_KEEP_MS,
    Aggregate,
    ProfileState,
    keep_newest,
    purchased,
    remember,
)
from features.registry import SERIES, SERIES_ADDED_BY
from features.traits import LATEST_WINS, TraitPolicy
from features.windows import KEY_MASK, KEY_SHIFT
from schemas.consent import CONSENT
from schemas.events import CLICKSTREAM_TYPES, Event
from schemas.traits import IDENTIFY


def _cents(amount: float | None) -> int:
    return 0 if amount is None else round(amount * 100)


def _order(e: Event) -> tuple[int, str]:
    return e.ts, e.event_id


_LIVE_SPECS: Final = tuple((1 - s.window, s.gran) for s in SERIES)
_NAMES: Final = tuple(s.name for s in SERIES)
#: Per event type: ((base, gran) of the series it adds 1 to, those it adds its cents to).
_ADDS: Final = {
    t: (tuple((s.base, s.gran) for s in ones), tuple((s.base, s.gran) for s in cents))
    for t, (ones, cents) in SERIES_ADDED_BY.items()
}


def _live_lows(newest: int) -> list[int]:
    """Per series index: the smallest bucket that can still count (``Series.live_from``)."""
    return [(newest + w) // g for w, g in _LIVE_SPECS]


def _prune(a: Aggregate, frontier: int) -> None:
    """Drop what can no longer count for any ``as_of >= frontier``."""
    b = a.buckets
    if b:
        lows = _live_lows(frontier)
        for key in [k for k in b if (k & KEY_MASK) < lows[k >> KEY_SHIFT]]:
            del b[key]
    a.prune_at = frontier + _PRUNE_EVERY_MS
    if frontier - a.sessions_pruned_at < _PRUNE_SESSIONS_EVERY_MS:
        return
    a.sessions_pruned_at = frontier
    cutoff = frontier - SESSION_KEEP_MS
    if a.sids:
        for sid in [s for s, t in a.sids.items() if t < cutoff]:
            del a.sids[sid]
    if a.runs:
        for first in [f for f, last in a.runs.items() if last < cutoff]:
            del a.runs[first]


def _coalesce(runs: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Gap runs (first, last) of one stream from runs of its parts: join those < 30 min apart."""
    out: dict[int, int] = {}
    cur_first = cur_last = None
    for first, last in sorted(runs):
        if cur_first is not None and cur_last is not None and first - cur_last < SESSION_GAP_MS:
            cur_last = max(cur_last, last)
        else:
            if cur_first is not None and cur_last is not None:
                out[cur_first] = cur_last
            cur_first, cur_last = first, last
    if cur_first is not None and cur_last is not None:
        out[cur_first] = cur_last
    return out


def _set_runs(a: Aggregate, runs: dict[int, int]) -> None:
    a.runs = runs
    if runs:
        a.run_first = max(runs)
        a.run_last = runs[a.run_first]
    else:
        a.run_first = a.run_last = None


def _fold(a: Aggregate, e: Event) -> None:
    """Apply one event to an aggregate. Exact when events come in ``(ts, event_id)`` order."""
    ts = e.ts
    t = e.type
    last = a.last
    if last is None:
        a.first = a.last = ts
        a.iref = _interest.anchor(ts)
        a.prune_at = ts + _PRUNE_EVERY_MS
    elif ts > last:
        a.last = ts
        if ts >= a.prune_at:
            _prune(a, ts)
    elif a.first is not None and ts < a.first:
        a.first = ts
    a.events += 1
    counts = a.counts
    counts[t] = counts.get(t, 0) + 1
    adds = _ADDS.get(t)
    if adds is not None:
        b = a.buckets
        ones, totals = adds
        for base, g in ones:
            key = base + ts // g
            b[key] = b.get(key, 0) + 1
        if totals:
            cents = _cents(e.total)
            if cents > 0:
                for base, g in totals:
                    key = base + ts // g
                    b[key] = b.get(key, 0) + cents
    if t == "purchase":
        a.purchases += 1
        a.revenue += _cents(e.total)
        if a.last_purchase is None or ts > a.last_purchase:
            a.last_purchase = ts
        a.cart_items = 0
        a.cart_cents = 0
        a.cart.clear()
        bought = a.bought
        for pid in purchased(e):
            bought[pid] = ts
        if len(bought) > BOUGHT_PRODUCTS:
            keep_newest(bought)
    elif t == "refund":
        a.revenue -= _cents(e.total)
    elif t == "add_to_cart":
        q = e.quantity or 1
        a.cart_items += q
        a.cart_cents += _cents(e.price) * q
        a.cart_ts = ts
        if e.product_id:
            remember(a, e, "c")
            cart = a.cart
            if e.product_id in cart or len(cart) < CART_PRODUCTS:
                cart[e.product_id] = cart.get(e.product_id, 0) + q
    elif t == "remove_from_cart":
        q = e.quantity or 1
        a.cart_items = max(0, a.cart_items - q)
        a.cart_cents = max(0, a.cart_cents - _cents(e.price) * q)
        a.cart_ts = ts
        left = a.cart.get(e.product_id or "", 0) - q
        if left > 0:
            a.cart[e.product_id or ""] = left
        else:
            a.cart.pop(e.product_id or "", None)
    elif t == "product_view" and e.product_id:
        remember(a, e, "v")
    if e.category is not None or e.items:
        contrib = _interest.contributions(e)
        if contrib:
            sc = a.interest
            if ts - a.iref >= _interest.ANCHOR_MS:
                ref = _interest.anchor(ts)
                _interest.rescale(sc, a.iref, ref)
                a.iref = ref
            f = 2.0 ** ((ts - a.iref) / _interest.HALF_LIFE_MS)
            for cat, w in contrib:
                cur = sc.get(cat)
                if cur is None:
                    sc[cat] = w * f
                    if len(sc) > _interest.MAX_CATEGORIES:
                        _interest.drop_lowest(sc)
                else:
                    sc[cat] = cur + w * f
    if t not in CLICKSTREAM_TYPES:
        return  # transactions and decision outcomes never open or extend a session (a visit)
    sid = e.session_id
    if sid is not None:
        sids = a.sids
        prev = sids.get(sid)
        if prev is None or ts < prev or prev < ts - SESSION_KEEP_MS:
            sids[sid] = ts
    else:
        rl = a.run_last
        if rl is None or ts >= rl + SESSION_GAP_MS:
            a.runs[ts] = ts
            a.run_first = a.run_last = ts
        elif ts >= rl:
            a.runs[a.run_first] = ts  # type: ignore[index]
            a.run_last = ts
        else:  # older than the current run's end: only after a merge
            _set_runs(a, _coalesce(chain(a.runs.items(), [(ts, ts)])))


def _settle(state: ProfileState) -> None:
    """Fold the buffered events older than ``newest - lateness`` into the settled part."""
    newest = state.current.last
    buf = state.buffer
    if newest is None or not buf:
        return
    threshold = newest - state.lateness_ms
    n = 0
    while n < len(buf) and buf[n].ts < threshold:
        n += 1
    if n:
        settled = state.settled
        for e in buf[:n]:
            _fold(settled, e)
        del buf[:n]


def _rebuild(state: ProfileState) -> None:
    cur = state.settled.copy()
    for e in state.buffer:
        _fold(cur, e)
    state.current = cur


def _prune_seen(state: ProfileState, newest: int) -> None:
    cutoff = newest - max(DEDUP_MS, state.lateness_ms)
    seen = state.seen
    for eid in [k for k, t in seen.items() if t < cutoff]:
        del seen[eid]
    state.seen_prune_at = newest + _PRUNE_SEEN_EVERY_MS


# --------------------------------------------------------------------------------------------
# Public API: state updates


def new_state(key: str) -> ProfileState:
    """An empty state.

    Parameters
    ----------
    key
        The partition key: ``c:<customer_id>`` or ``a:<anonymous_id>``.

    Returns
    -------
    ProfileState
        A state with no event applied yet.

    Examples
    --------
    >>> s = new_state("a:dev-1")
    >>> s.kind, s.id, last_event_ts(s)
    ('anonymous', 'dev-1', 0)
    """
    return ProfileState(key=key)


def ingest(
    state: ProfileState,
    event: Event,
    lateness_ms: int,
    policy: TraitPolicy = LATEST_WINS,
    consent: ConsentDefaults = ALL_GRANTED,
) -> str:
    """Apply one event to a state, in place, as if all events had come in ``(ts, event_id)`` order.

    Parameters
    ----------
    state
        The state to update.
    event
        A validated event of this state's key.
    lateness_ms
        How far (event time) behind the newest applied event an event may be and still apply.

    Returns
    -------
    str
        :data:`APPLIED`; :data:`DUPLICATE` when an event with the same ``event_id`` was applied
        with a ts within 24 h of this one and not more than ``max(24 h, lateness_ms)`` before the
        newest event (ignored); :data:`LATE` when ``event.ts < newest applied ts - lateness_ms``
        (not applied: dead-letter it). Neither changes the state.

    Examples
    --------
    >>> from schemas import Event
    >>> s = new_state("c:1")
    >>> ev = [Event(event_id=str(i), type="page_view", ts=t, customer_id="1")
    ...       for i, t in enumerate([10_000, 9_000, 20_000, 5_000])]
    >>> [ingest(s, e, lateness_ms=10_000) for e in ev]
    ['applied', 'applied', 'applied', 'late']
    >>> s.current.events, s.current.first, last_event_ts(s)
    (3, 9000, 20000)

    A ``consent`` event only records its decisions (:func:`~features.profile.apply_consent`):
    :data:`APPLIED` when they changed something, else :data:`DUPLICATE`. Without the
    ``analytics`` purpose (its newest decision, else the default of ``consent``) any other event
    but an ``identify`` is :data:`NO_CONSENT`: not applied (count and drop it).

    An ``identify`` event only offers its traits (:func:`~features.profile.apply_identify`
    with ``policy``): :data:`APPLIED` when they changed, else :data:`DUPLICATE`.
    """
    if event.type == IDENTIFY:
        return APPLIED if apply_identify(state, event, policy) else DUPLICATE
    if event.type == CONSENT:
        return APPLIED if apply_consent(state, event) else DUPLICATE
    # (the common case, nothing decided and granted by default, costs one test)
    if (state.consent or not consent.analytics) and not allows(state.consent, "analytics", consent):
        return NO_CONSENT
    ts = event.ts
    eid = event.event_id
    cur = state.current
    newest = cur.last
    seen = state.seen
    if newest is not None:
        prev = seen.get(eid)
        if (
            prev is not None
            and prev >= newest - max(DEDUP_MS, lateness_ms)
            and -DEDUP_MS <= ts - prev <= DEDUP_MS
        ):
            return DUPLICATE
        if ts < newest - lateness_ms:
            return LATE
    state.lateness_ms = lateness_ms
    seen[eid] = ts
    buf = state.buffer
    if not buf:
        _fold(cur, event)
        buf.append(event)
    else:
        tail = buf[-1]
        if ts > tail.ts or (ts == tail.ts and eid > tail.event_id):
            if tail.ts < ts - lateness_ms:
                # The whole buffer settles: the current aggregate *is* the new settled part.
                state.settled = cur
                cur = state.current = cur.copy()
                buf = state.buffer = []
            _fold(cur, event)
            buf.append(event)
            if len(buf) > _BUFFER_CAP:
                _settle(state)
        else:
            bisect.insort(buf, event, key=_order)
            _settle(state)
            _rebuild(state)
    newest = state.current.last
    if newest is not None and newest >= state.seen_prune_at:
        _prune_seen(state, newest)
    return APPLIED


def last_event_ts(state: ProfileState) -> int:
    """The newest applied event's ts.

    Retention: the dataflow drops a state (and its Redis hash) once
    ``last_event_ts(state) + retention < watermark``.

    Parameters
    ----------
    state
        A profile state.

    Returns
    -------
    int
        Epoch milliseconds; 0 when nothing was applied yet.
    """
    last = state.current.last
    newest = 0 if last is None else last
    if state.traits:  # (traits keep a profile alive too: a CRM record without behaviour)
        newest = max(newest, max(t.ts for t in state.traits.values()))
    return newest

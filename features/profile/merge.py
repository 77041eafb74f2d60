"""Identity stitching: merging an anonymous visitor's history into a customer's state."""

from __future__ import annotations

from itertools import chain

from features import interest as _interest
from features.profile.fold import (
    _coalesce,
    _fold,
    _order,
    _prune,
    _rebuild,
    _set_runs,
)
from features.profile.sources import merge_sources, record_link
from features.profile.state import (
    BOUGHT_PRODUCTS,
    CART_PRODUCTS,
    RECENT_PRODUCTS,
    SESSION_KEEP_MS,
    Aggregate,
    ProfileState,
    keep_newest,
)
from features.traits import LATEST_WINS, TraitPolicy
from schemas.events import Event


def _combine(a: Aggregate, b: Aggregate) -> Aggregate:
    """Two aggregates of disjoint histories as one (``a`` the target, ``b`` the merged one)."""
    if b.last is None:
        return a.copy()
    if a.last is None:
        return b.copy()
    buckets = dict(a.buckets)
    for k, v in b.buckets.items():
        buckets[k] = buckets.get(k, 0) + v
    counts = dict(a.counts)
    for t, n in b.counts.items():
        counts[t] = counts.get(t, 0) + n
    lp = max((x for x in (a.last_purchase, b.last_purchase) if x is not None), default=None)
    # Cart: a side's cart survives unless the other side purchased after its last cart change
    # (a purchase empties the cart); surviving carts add up.
    items = cents = 0
    cart_ts: int | None = None
    cart: dict[str, int] = {}
    for side, other in ((a, b), (b, a)):
        if side.cart_ts is None:
            continue
        cart_ts = side.cart_ts if cart_ts is None else max(cart_ts, side.cart_ts)
        if other.last_purchase is None or other.last_purchase < side.cart_ts:
            items += side.cart_items
            cents += side.cart_cents
            for pid, q in side.cart.items():
                if pid in cart or len(cart) < CART_PRODUCTS:
                    cart[pid] = cart.get(pid, 0) + q
    bought = dict(a.bought)
    for pid, ts in b.bought.items():
        bought[pid] = max(ts, bought.get(pid, ts))
    if len(bought) > BOUGHT_PRODUCTS:
        keep_newest(bought)
    recent = sorted(chain(a.recent, b.recent))[-RECENT_PRODUCTS:]
    scores, iref = _interest.combine(a.interest, a.iref, b.interest, b.iref)
    sids = dict(a.sids)
    for sid, first in b.sids.items():
        prev = sids.get(sid)
        if prev is None:
            sids[sid] = first
        elif abs(first - prev) <= SESSION_KEEP_MS:
            sids[sid] = min(prev, first)  # one session: counted once, at its first event
        else:
            sids[sid] = max(prev, first)  # the id was reused; the older session no longer counts
    runs = _coalesce(chain(a.runs.items(), b.runs.items()))
    assert a.first is not None and b.first is not None
    out = Aggregate(
        buckets=buckets,
        counts=counts,
        events=a.events + b.events,
        first=min(a.first, b.first),
        last=max(a.last, b.last),
        purchases=a.purchases + b.purchases,
        revenue=a.revenue + b.revenue,
        last_purchase=lp,
        cart_items=items,
        cart_cents=cents,
        cart_ts=cart_ts,
        iref=iref,
        interest=scores,
        sids=sids,
        recent=recent,
        cart=cart,
        bought=bought,
    )
    _set_runs(out, runs)
    _prune(out, max(a.last, b.last))
    return out


def merge_into(
    target: ProfileState,
    other: ProfileState,
    lateness_ms: int | None = None,
    policy: TraitPolicy = LATEST_WINS,
) -> None:
    """Identity stitching: make ``other``'s history (an anonymous visitor) part of ``target``.

    Windowed counts and sums, lifetime values, sessions (a ``session_id`` in both counts once, at
    its first ts; gap runs less than 30 minutes apart join), interests, duplicate detection and
    identity links become those of the union of the two event streams. The events of both within
    the lateness of the newer one are replayed in order, so the merge is exact for them; older
    parts are combined, and there the cart is approximated: each side's cart survives unless the
    other side has a purchase after its last cart change. A ``session_id`` reused more than 31
    days apart across the two sides is approximated too.

    Parameters
    ----------
    target
        The customer's state, updated in place.
    other
        The anonymous state; not modified.
    policy
        How traits are merged (:mod:`features.traits`): trait by trait, the order of the
        merges does not matter.
    lateness_ms
        Defaults to the larger lateness the two states last ingested with.

    Examples
    --------
    >>> from features.profile import *
    >>> from schemas import Event
    >>> T = 1767323045000
    >>> anon, cust = new_state("a:dev"), new_state("c:42")
    >>> _ = ingest(anon, Event(event_id="1", type="add_to_cart", ts=T, anonymous_id="dev",
    ...                        session_id="s", price=9.99, quantity=2), 600_000)
    >>> _ = ingest(cust, Event(event_id="2", type="login", ts=T + 60_000, customer_id="42",
    ...                        anonymous_id="dev", session_id="s"), 600_000)
    >>> merge_into(cust, anon)
    >>> record_link(cust, "dev", "42", T + 60_000, "2")
    >>> doc = render(view(cust), T + 60_000)
    >>> doc["cart_items"], doc["cart_value"], doc["sessions_7d"], doc["events_total"]
    (2, 19.98, 1, 2)
    """
    oc = other.current
    if oc.last is not None:
        tc = target.current
        if tc.last is None:
            target.settled = other.settled.copy()
            target.current = oc.copy()
            target.buffer = list(other.buffer)
            target.lateness_ms = max(target.lateness_ms, other.lateness_ms)
        else:
            lateness = (
                max(target.lateness_ms, other.lateness_ms) if lateness_ms is None else lateness_ms
            )
            threshold = max(tc.last, oc.last) - lateness
            t_settled, t_rest = _split(target.settled, target.buffer, threshold)
            o_settled, o_rest = _split(other.settled.copy(), other.buffer, threshold)
            ids = {e.event_id for e in t_rest}
            buf = t_rest + [e for e in o_rest if e.event_id not in ids]
            buf.sort(key=_order)
            target.settled = _combine(t_settled, o_settled)
            target.buffer = buf
            _rebuild(target)
    for eid, ts in other.seen.items():
        target.seen.setdefault(eid, ts)
    for link in other.identities:
        record_link(target, *link)
    merge_sources(target, other, policy)


def _split(settled: Aggregate, buf: list[Event], threshold: int) -> tuple[Aggregate, list[Event]]:
    n = 0
    while n < len(buf) and buf[n].ts < threshold:
        _fold(settled, buf[n])
        n += 1
    return settled, buf[n:]

"""Per-customer profile state: event-time windows, lateness, duplicates, identity merge, Redis view.

A :class:`ProfileState` is the authoritative state of one customer (``c:<customer_id>``) or one
anonymous visitor (``a:<anonymous_id>``), kept by the dataflow in Bytewax snapshots.
:func:`ingest` applies one event (or says it is a duplicate or too late), :func:`merge_into`
stitches an anonymous history into a customer, :func:`to_fields` projects the state to the Redis
hash (absolute values), and serving and the CLI read it back with :func:`from_fields` and compute
the public document as of any time with :func:`render`. The public feature definitions and the
Redis layout are in the README ("Profiles").

How order is handled: the state keeps a *settled* :class:`Aggregate` (every applied event older
than ``newest - lateness``, folded strictly in ``(ts, event_id)`` order), a *buffer* of the newer
events sorted by ``(ts, event_id)``, and the *current* aggregate, which equals the settled part
with the buffer replayed in order. An in-order event updates the current aggregate in place (the
common, fast case); an out-of-order event within the lateness is inserted into the buffer and the
current aggregate is rebuilt from the settled part. So every value equals what the sorted,
deduplicated stream gives, to the bit: amounts are integer cents and floating-point interest scores
are updated with the same operations in the same order.

Examples
--------
>>> from schemas import Event
>>> T = 1767323045000                                    # 2026-01-02T03:04:05Z
>>> s = new_state("c:42")
>>> ingest(s, Event(event_id="1", type="product_view", ts=T, customer_id="42",
...                 category="shoes", session_id="s1"), lateness_ms=600_000)
'applied'
>>> ingest(s, Event(event_id="2", type="purchase", ts=T + 60_000, customer_id="42",
...                 total=20.5, session_id="s1"), lateness_ms=600_000)
'applied'
>>> ingest(s, Event(event_id="2", type="purchase", ts=T + 60_000, customer_id="42",
...                 total=20.5, session_id="s1"), lateness_ms=600_000)
'duplicate'
>>> ingest(s, Event(event_id="0", type="page_view", ts=T - 3_600_000, customer_id="42"),
...        lateness_ms=600_000)
'late'
>>> doc = render(from_fields(to_fields(s)), as_of=T + 40 * 86_400_000)
>>> doc["customer_id"], doc["purchases_30d"], doc["purchases_90d"], doc["revenue_total"]
('42', 0, 1, 20.5)
>>> doc["days_since_last_purchase"], doc["sessions_30d"], doc["top_categories"]
(39.999, 0, ['shoes'])
>>> from_fields(to_fields(s)) == view(s)
True
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final, NamedTuple

import msgspec

from features import interest as _interest
from features.windows import (
    DAY,
    HOUR,
    KEY_MASK,
    KEY_SHIFT,
    MINUTE,
    SERIES,
    SERIES_BY_NAME,
    decode_buckets,
    encode_buckets,
    series_group,
    window_sum,
)
from schemas.events import Event, format_ts
from schemas.keys import is_device

LATE: Final = "late"
DUPLICATE: Final = "duplicate"
APPLIED: Final = "applied"

#: Version of the Redis projection layout; bumped when the field layout changes.
LAYOUT_VERSION: Final = "2"
#: An ``event_id`` seen within this much event time of an applied one is a duplicate.
DEDUP_MS: Final = DAY
#: Events without ``session_id`` start a new session after this gap.
SESSION_GAP_MS: Final = 30 * MINUTE
#: Session ids are remembered this long (before the newest event): a reused id is not recounted.
SESSION_KEEP_MS: Final = 31 * DAY
#: ``cart_abandoned`` needs this much quiet time since the last event.
CART_ABANDON_MS: Final = 30 * MINUTE
#: Lateness assumed by :func:`merge_into` for a state that never ingested anything.
DEFAULT_LATENESS_MS: Final = 10 * MINUTE
#: Identity links kept per profile (the newest by ``(ts, event_id)``).
MAX_IDENTITIES: Final = 20
#: Largest Redis field name or value we write (Redis's default ``hash-max-listpack-value``).
MAX_FIELD_BYTES: Final = 64

# Buffer size beyond which the settled part is advanced even without an out-of-order event.
_BUFFER_CAP: Final = 64
# How often (in event time) the aggregates drop buckets, and sessions, that can no longer count,
# and the duplicate map its old ids (amortised: a scan each time).
_PRUNE_EVERY_MS: Final = HOUR
_PRUNE_SESSIONS_EVERY_MS: Final = DAY
_PRUNE_SEEN_EVERY_MS: Final = 6 * HOUR

#: Short codes of the event types in the Redis ``n:<code>`` lifetime-count fields.
TYPE_CODES: Final = {
    "page_view": "pv",
    "product_view": "vw",
    "search": "sr",
    "add_to_cart": "ac",
    "remove_from_cart": "rc",
    "checkout_start": "cs",
    "login": "li",
    "logout": "lo",
    "signup": "su",
    "purchase": "pu",
    "refund": "rf",
    "decision_outcome": "do",
}
_CODE_TYPES: Final = {v: k for k, v in TYPE_CODES.items()}


def _pairs(prefix: str) -> tuple[tuple[int, int], ...]:
    return tuple((s.base, s.gran) for s in series_group(prefix))


_COUNTED: Final = {
    "page_view": _pairs("pv"),
    "product_view": _pairs("vw"),
    "add_to_cart": _pairs("ac"),
    "purchase": _pairs("pu"),
}
_RP: Final = _pairs("rp")
_RN: Final = _pairs("rn")
_SESSION_SERIES: Final = series_group("se")

#: Public windowed count features and the series each one reads.
COUNT_FEATURES: Final = tuple(
    (feature, SERIES_BY_NAME[series])
    for feature, series in (
        ("page_views_1h", "pv1h"),
        ("page_views_24h", "pv24h"),
        ("page_views_7d", "pv7d"),
        ("product_views_1h", "vw1h"),
        ("product_views_24h", "vw24h"),
        ("product_views_7d", "vw7d"),
        ("add_to_carts_1h", "ac1h"),
        ("add_to_carts_24h", "ac24h"),
        ("add_to_carts_7d", "ac7d"),
        ("sessions_7d", "se7d"),
        ("sessions_30d", "se30d"),
        ("purchases_7d", "pu7d"),
        ("purchases_30d", "pu30d"),
        ("purchases_90d", "pu90d"),
    )
)
#: Public windowed revenue features: (name, purchases series, refunds series), in cents.
REVENUE_FEATURES: Final = tuple(
    (f"revenue_{w}", SERIES_BY_NAME[f"rp{w}"], SERIES_BY_NAME[f"rn{w}"])
    for w in ("7d", "30d", "90d")
)


class LayoutError(ValueError):
    """A Redis hash that is not a profile of the current layout version."""


class Link(NamedTuple):
    """An identity link: ``anonymous_id`` linked to ``customer_id`` by ``event_id`` at ``ts``."""

    anonymous_id: str
    customer_id: str
    ts: int
    event_id: str


@dataclass(slots=True)
class Aggregate:
    """Everything folded from an ordered stream of events (one part of a :class:`ProfileState`).

    Timestamps are epoch ms, amounts integer cents. ``buckets`` packs every windowed series in one
    map (see :mod:`features.windows`); ``interest`` holds scores relative to ``iref``; ``sids``
    maps a ``session_id`` to its first ts and ``runs`` a gap-run's first ts to its last ts.
    """

    buckets: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    events: int = 0
    first: int | None = None
    last: int | None = None
    purchases: int = 0
    revenue: int = 0
    last_purchase: int | None = None
    cart_items: int = 0
    cart_cents: int = 0
    cart_ts: int | None = None
    iref: int = 0
    interest: dict[str, float] = field(default_factory=dict)
    sids: dict[str, int] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)
    run_first: int | None = None
    run_last: int | None = None
    prune_at: int = 0
    sessions_pruned_at: int = 0

    def copy(self) -> Aggregate:
        """An independent copy."""
        return Aggregate(
            dict(self.buckets),
            dict(self.counts),
            self.events,
            self.first,
            self.last,
            self.purchases,
            self.revenue,
            self.last_purchase,
            self.cart_items,
            self.cart_cents,
            self.cart_ts,
            self.iref,
            dict(self.interest),
            dict(self.sids),
            dict(self.runs),
            self.run_first,
            self.run_last,
            self.prune_at,
            self.sessions_pruned_at,
        )


class _Keyed:
    """``kind`` and ``id`` of something keyed ``c:<customer_id>`` or ``a:<anonymous_id>``."""

    __slots__ = ()
    key: str

    @property
    def kind(self) -> str:
        """``customer`` or ``anonymous``."""
        return "anonymous" if is_device(self.key) else "customer"

    @property
    def id(self) -> str:
        """The customer id or anonymous id without its prefix."""
        return self.key[2:]


@dataclass(slots=True)
class ProfileState(_Keyed):
    """One customer's (or anonymous visitor's) authoritative state; see the module docstring.

    ``settled`` + ``buffer`` replayed in ``(ts, event_id)`` order == ``current``. ``seen`` maps the
    recently applied event ids to their ts (for duplicates); ``identities`` holds identity links.
    """

    key: str
    settled: Aggregate = field(default_factory=Aggregate)
    current: Aggregate = field(default_factory=Aggregate)
    buffer: list[Event] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    seen_prune_at: int = 0
    lateness_ms: int = DEFAULT_LATENESS_MS
    identities: list[Link] = field(default_factory=list)

    @property
    def purchases_total(self) -> int:
        """Lifetime purchases (cheap: no view needed)."""
        return self.current.purchases

    @property
    def revenue_total(self) -> float:
        """Lifetime revenue net of refunds (cheap: no view needed)."""
        return self.current.revenue / 100

    @property
    def last_purchase_ts(self) -> int | None:
        """Newest purchase ts (cheap: no view needed)."""
        return self.current.last_purchase


@dataclass(slots=True)
class ProfileView(_Keyed):
    """What :func:`render` needs: the Redis projection of a state, decoded.

    ``buckets`` maps a series name (``pv1h``, ``rp30d``, ``se7d``, ...) to its non-zero buckets
    that can still count (``bucket index -> count or cents``); ``interests`` are the category
    scores as of ``last_seen_ts`` (9 significant digits).
    """

    key: str
    first_seen_ts: int | None = None
    last_seen_ts: int | None = None
    last_purchase_ts: int | None = None
    events_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    purchases_total: int = 0
    revenue_cents: int = 0
    cart_items: int = 0
    cart_cents: int = 0
    interests: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[int, int]] = field(default_factory=dict)
    identities: list[Link] = field(default_factory=list)

    @property
    def revenue_total(self) -> float:
        """Lifetime revenue net of refunds, in currency units."""
        return self.revenue_cents / 100

    @property
    def cart_value(self) -> float:
        """Cart value in currency units."""
        return self.cart_cents / 100


# --------------------------------------------------------------------------------------------
# Folding events


def _cents(amount: float | None) -> int:
    return 0 if amount is None else round(amount * 100)


def _order(e: Event) -> tuple[int, str]:
    return e.ts, e.event_id


_LIVE_SPECS: Final = tuple((1 - s.window, s.gran) for s in SERIES)
_NAMES: Final = tuple(s.name for s in SERIES)


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
    b = a.buckets
    spec = _COUNTED.get(t)
    if spec is not None:
        for base, g in spec:
            key = base + ts // g
            b[key] = b.get(key, 0) + 1
    if t == "purchase":
        cents = _cents(e.total)
        a.purchases += 1
        a.revenue += cents
        if a.last_purchase is None or ts > a.last_purchase:
            a.last_purchase = ts
        if cents > 0:
            for base, g in _RP:
                key = base + ts // g
                b[key] = b.get(key, 0) + cents
        a.cart_items = 0
        a.cart_cents = 0
    elif t == "refund":
        cents = _cents(e.total)
        a.revenue -= cents
        if cents > 0:
            for base, g in _RN:
                key = base + ts // g
                b[key] = b.get(key, 0) + cents
    elif t == "add_to_cart":
        q = e.quantity or 1
        a.cart_items += q
        a.cart_cents += _cents(e.price) * q
        a.cart_ts = ts
    elif t == "remove_from_cart":
        q = e.quantity or 1
        a.cart_items = max(0, a.cart_items - q)
        a.cart_cents = max(0, a.cart_cents - _cents(e.price) * q)
        a.cart_ts = ts
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


def ingest(state: ProfileState, event: Event, lateness_ms: int) -> str:
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
    """
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
    return 0 if last is None else last


def record_link(
    state: ProfileState, anonymous_id: str, customer_id: str, ts: int, event_id: str
) -> None:
    """Record an identity link; it is listed in the profile's ``identities``.

    Idempotent by ``event_id``; the newest :data:`MAX_IDENTITIES` links by ``(ts, event_id)``
    are kept.

    Parameters
    ----------
    state
        The (customer) state to record the link in.
    anonymous_id, customer_id
        The linked ids.
    ts, event_id
        Time (epoch ms) and id of the linking event (``login`` or ``signup``).

    Examples
    --------
    >>> s = new_state("c:42")
    >>> record_link(s, "dev-1", "42", 1767323045000, "e1")
    >>> record_link(s, "dev-1", "42", 1767323045000, "e1")
    >>> render(view(s), 1767323045000)["identities"]
    [{'anonymous_id': 'dev-1', 'customer_id': '42', 'ts': '2026-01-02T03:04:05Z', 'event_id': 'e1'}]
    """
    links = state.identities
    if any(link.event_id == event_id for link in links):
        return
    links.append(Link(anonymous_id, customer_id, ts, event_id))
    links.sort(key=lambda link: (link.ts, link.event_id))
    del links[:-MAX_IDENTITIES]


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
    for side, other in ((a, b), (b, a)):
        if side.cart_ts is None:
            continue
        cart_ts = side.cart_ts if cart_ts is None else max(cart_ts, side.cart_ts)
        if other.last_purchase is None or other.last_purchase < side.cart_ts:
            items += side.cart_items
            cents += side.cart_cents
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
    )
    _set_runs(out, runs)
    _prune(out, max(a.last, b.last))
    return out


def merge_into(target: ProfileState, other: ProfileState, lateness_ms: int | None = None) -> None:
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
    lateness_ms
        Defaults to the larger lateness the two states last ingested with.

    Examples
    --------
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


def _split(settled: Aggregate, buf: list[Event], threshold: int) -> tuple[Aggregate, list[Event]]:
    n = 0
    while n < len(buf) and buf[n].ts < threshold:
        _fold(settled, buf[n])
        n += 1
    return settled, buf[n:]


# --------------------------------------------------------------------------------------------
# The view and its Redis projection


def _sig(x: float) -> float:
    return float(f"{x:.9g}")


def view(state: ProfileState) -> ProfileView:
    """The state's current view: what :func:`to_fields` stores and :func:`render` needs.

    Parameters
    ----------
    state
        A profile state.

    Returns
    -------
    ProfileView
        Equal to ``from_fields(to_fields(state))``: the live, non-zero buckets of every series
        (sessions included), lifetime values, cart, interests as of the newest event (9
        significant digits) and identity links.

    Examples
    --------
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="product_view", ts=86_400_000, customer_id="42",
    ...                     category="books"), 600_000)
    >>> v = view(s)
    >>> v.buckets["vw1h"], v.interests, v.last_seen_ts
    ({576: 1}, {'books': 1.0}, 86400000)
    """
    a = state.current
    newest = a.last
    buckets: dict[str, dict[int, int]] = {}
    interests: dict[str, float] = {}
    if newest is not None:
        b = a.buckets
        cur_idx = -1
        low = 0
        d: dict[int, int] | None = None
        for key in sorted(b):  # grouped by series, then by bucket
            idx = key >> KEY_SHIFT
            if idx != cur_idx:
                cur_idx = idx
                w, g = _LIVE_SPECS[idx]
                low = (newest + w) // g
                d = None
            k = key & KEY_MASK
            if k >= low:
                if d is None:
                    d = buckets[_NAMES[idx]] = {}
                d[k] = b[key]
        if a.sids or a.runs:
            for s in _SESSION_SERIES:
                g = s.gran
                low = s.live_from(newest)
                sd: dict[int, int] = {}
                for first in chain(a.sids.values(), a.runs):
                    k = first // g
                    if k >= low:
                        sd[k] = sd.get(k, 0) + 1
                if sd:
                    buckets[s.name] = sd
        f = 2.0 ** ((a.iref - newest) / _interest.HALF_LIFE_MS)
        interests = {c: _sig(x * f) for c, x in a.interest.items()}
    return ProfileView(
        key=state.key,
        first_seen_ts=a.first,
        last_seen_ts=newest,
        last_purchase_ts=a.last_purchase,
        events_total=a.events,
        counts=dict(a.counts),
        purchases_total=a.purchases,
        revenue_cents=a.revenue,
        cart_items=a.cart_items,
        cart_cents=a.cart_cents,
        interests=interests,
        buckets=buckets,
        identities=list(state.identities),
    )


def _put(fields: dict[str, str], name: str, value: str) -> None:
    """Set a field, spreading a value longer than 64 bytes over ``name``, ``name/1``, ..."""
    if len(value) <= MAX_FIELD_BYTES and (value.isascii() or len(value.encode()) <= 64):
        fields[name] = value
        return
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for ch in value:
        n = len(ch.encode())
        if size + n > MAX_FIELD_BYTES:
            chunks.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += n
    chunks.append("".join(cur))
    fields[name] = chunks[0]
    for i, chunk in enumerate(chunks[1:], 1):
        fields[f"{name}/{i}"] = chunk


_link_encoder: Final = msgspec.json.Encoder()
_link_decoder: Final = msgspec.json.Decoder(tuple[str, str, int, str])


def fields_of(v: ProfileView) -> dict[str, str]:
    """The Redis hash of a view (:func:`to_fields` is ``fields_of(view(state))``)."""
    f: dict[str, str] = {"v": LAYOUT_VERSION}
    _put(f, "key", v.key)
    if v.first_seen_ts is not None:
        f["ft"] = str(v.first_seen_ts)
    if v.last_seen_ts is not None:
        f["lt"] = str(v.last_seen_ts)
    if v.last_purchase_ts is not None:
        f["lp"] = str(v.last_purchase_ts)
    f["ne"] = str(v.events_total)
    if v.purchases_total:
        f["np"] = str(v.purchases_total)
    if v.revenue_cents:
        f["rv"] = str(v.revenue_cents)
    for t, n in v.counts.items():
        f["n:" + TYPE_CODES.get(t, t)] = str(n)
    if v.cart_items:
        f["ci"] = str(v.cart_items)
    if v.cart_cents:
        f["cv"] = str(v.cart_cents)
    for c, x in v.interests.items():
        f["i:" + c] = repr(x)
    if v.buckets:
        last = v.last_seen_ts or 0
        for name, d in v.buckets.items():
            _put(f, name, encode_buckets(d, SERIES_BY_NAME[name].live_from(last)))
    own = v.id if v.kind == "customer" else None
    for j, link in enumerate(v.identities):
        cust = "" if link.customer_id == own else link.customer_id
        value = _link_encoder.encode((link.anonymous_id, cust, link.ts, link.event_id))
        _put(f, f"id{j}", value.decode())
    return f


def to_fields(state: ProfileState) -> dict[str, str]:
    """The Redis hash projection of the state's current view.

    Parameters
    ----------
    state
        A profile state.

    Returns
    -------
    dict[str, str]
        Field -> value, absolute and deterministic (the same state gives the same dict). Every
        field name and value is at most 64 bytes (longer values are split over ``name/1``,
        ``name/2``, ...), so typical profiles stay in Redis's compact listpack encoding. Write it
        whole, replacing the old hash (fields disappear as buckets expire). The layout is
        documented in the README ("Profiles").

    Examples
    --------
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="page_view", ts=1767323045000, customer_id="42"),
    ...            600_000)
    >>> sorted(to_fields(s).items())   # doctest: +NORMALIZE_WHITESPACE
    [('ft', '1767323045000'), ('key', 'c:42'), ('lt', '1767323045000'), ('n:pv', '1'),
     ('ne', '1'), ('pv1h', 'o:1'), ('pv24h', 'o:1'), ('pv7d', 's:1'), ('se30d', 'u:1'),
     ('se7d', 's:1'), ('v', '2')]
    """
    return fields_of(view(state))


def from_fields(raw: Mapping[str, str] | Mapping[bytes, bytes] | Mapping[Any, Any]) -> ProfileView:
    """Rebuild the view from a Redis hash.

    Parameters
    ----------
    raw
        ``HGETALL`` of a profile hash: str or bytes keys and values.

    Returns
    -------
    ProfileView
        What :func:`render` needs; ``from_fields(to_fields(s)) == view(s)``.

    Raises
    ------
    LayoutError
        When the hash is not a profile of layout version ``2``.

    Examples
    --------
    >>> v = from_fields({b"v": b"2", b"key": b"c:42", b"lt": b"86400000", b"vw1h": b"o:1"})
    >>> v.id, v.buckets
    ('42', {'vw1h': {576: 1}})
    """
    counts: dict[str, int] = {}
    interests: dict[str, float] = {}
    f: dict[str, str] = {}
    parts: dict[str, dict[int, str]] = {}
    for k, x in raw.items():
        name: str = k.decode() if isinstance(k, bytes) else k
        val: str = x.decode() if isinstance(x, bytes) else x
        head = name[:2]
        if head == "i:":
            interests[name[2:]] = float(val)
        elif head == "n:":
            code = name[2:]
            counts[_CODE_TYPES.get(code, code)] = int(val)
        elif "/" in name:
            base, _, part = name.partition("/")
            parts.setdefault(base, {})[int(part)] = val
        else:
            f[name] = val
    for base, p in parts.items():
        f[base] = f.get(base, "") + "".join(p[i] for i in sorted(p))
    if f.get("v") != LAYOUT_VERSION or "key" not in f:
        raise LayoutError(f"not a profile of layout version {LAYOUT_VERSION}: v={f.get('v')!r}")
    key = f["key"]
    v = ProfileView(
        key=key,
        first_seen_ts=int(f["ft"]) if "ft" in f else None,
        last_seen_ts=int(f["lt"]) if "lt" in f else None,
        last_purchase_ts=int(f["lp"]) if "lp" in f else None,
        events_total=int(f.get("ne", "0")),
        counts=counts,
        purchases_total=int(f.get("np", "0")),
        revenue_cents=int(f.get("rv", "0")),
        cart_items=int(f.get("ci", "0")),
        cart_cents=int(f.get("cv", "0")),
        interests=interests,
    )
    own = v.id if v.kind == "customer" else ""
    links: list[tuple[int, Link]] = []
    for name, val in f.items():
        if name in SERIES_BY_NAME:
            origin = SERIES_BY_NAME[name].live_from(v.last_seen_ts or 0)
            v.buckets[name] = decode_buckets(val, origin)
        elif name.startswith("id") and name[2:].isdigit():
            anon, cust, ts, eid = _link_decoder.decode(val)
            links.append((int(name[2:]), Link(anon, cust or own, ts, eid)))
    v.identities = [link for _, link in sorted(links)]
    return v


# --------------------------------------------------------------------------------------------
# Rendering


def _money(cents: int) -> float:
    return cents / 100


def _ts(ms: int | None) -> str | None:
    return None if ms is None else format_ts(ms)


def _days(as_of: int, ref: int | None) -> float | None:
    if ref is None or as_of < ref:
        return None
    return round((as_of - ref) / DAY, 3)


def render(v: ProfileView, as_of: int) -> dict[str, Any]:
    """The public JSON profile document as of a time: a pure function of its inputs.

    Parameters
    ----------
    v
        A view (:func:`view`, or :func:`from_fields` of the Redis hash).
    as_of
        Epoch milliseconds.

    Returns
    -------
    dict[str, Any]
        ``customer_id`` (or ``anonymous_id``), ``kind``, ``as_of``, every public feature (see
        the README), ``counts``, ``events_total``, ``category_scores`` and ``identities``.
        Windowed values follow the window contract for ``as_of >= last_seen_ts``; for earlier
        ``as_of`` they are approximate. Lifetime values include every applied event.

    Examples
    --------
    >>> v = ProfileView(key="a:dev", first_seen_ts=0, last_seen_ts=0, events_total=1,
    ...                 counts={"page_view": 1}, buckets={"pv1h": {0: 1}})
    >>> doc = render(v, as_of=3_600_000)
    >>> doc["anonymous_id"], doc["kind"], doc["as_of"], doc["page_views_1h"], doc["tenure_days"]
    ('dev', 'anonymous', '1970-01-01T01:00:00Z', 1, 0.042)
    >>> render(v, as_of=3_750_000)["page_views_1h"]      # bucket [0, 150 s) is out of the hour
    0
    """
    doc: dict[str, Any] = {
        "customer_id" if v.kind == "customer" else "anonymous_id": v.id,
        "kind": v.kind,
        "as_of": format_ts(as_of),
    }
    b = v.buckets
    for name, s in COUNT_FEATURES:
        d = b.get(s.name)
        doc[name] = window_sum(d, s, as_of) if d else 0
    for name, pos, neg in REVENUE_FEATURES:
        dp, dn = b.get(pos.name), b.get(neg.name)
        net = (window_sum(dp, pos, as_of) if dp else 0) - (window_sum(dn, neg, as_of) if dn else 0)
        doc[name] = _money(net)
    n = v.purchases_total
    doc["purchases_total"] = n
    doc["revenue_total"] = _money(v.revenue_cents)
    doc["avg_order_value"] = round(v.revenue_cents / n / 100, 2) if n else None
    doc["first_seen_ts"] = _ts(v.first_seen_ts)
    doc["last_seen_ts"] = _ts(v.last_seen_ts)
    doc["last_purchase_ts"] = _ts(v.last_purchase_ts)
    doc["days_since_last_purchase"] = _days(as_of, v.last_purchase_ts)
    doc["days_since_last_seen"] = _days(as_of, v.last_seen_ts)
    doc["tenure_days"] = _days(as_of, v.first_seen_ts)
    doc["cart_items"] = v.cart_items
    doc["cart_value"] = _money(v.cart_cents)
    doc["cart_abandoned"] = (
        v.cart_items > 0
        and v.last_seen_ts is not None
        and as_of - v.last_seen_ts >= CART_ABANDON_MS
    )
    ranking = _interest.ranked(v.interests)
    ref = v.last_seen_ts if v.last_seen_ts is not None else as_of
    # (a read far before the newest event would overflow: scale by at most 2**64)
    factor = 2.0 ** min((ref - as_of) / _interest.HALF_LIFE_MS, 64.0)
    doc["top_categories"] = [c for c, _ in ranking[:3]]
    doc["category_scores"] = {c: round(x * factor, 4) for c, x in ranking}
    doc["counts"] = dict(sorted(v.counts.items()))
    doc["events_total"] = v.events_total
    doc["identities"] = [
        {
            "anonymous_id": link.anonymous_id,
            "customer_id": link.customer_id,
            "ts": format_ts(link.ts),
            "event_id": link.event_id,
        }
        for link in v.identities
    ]
    return doc


def render_state(state: ProfileState, as_of: int) -> dict[str, Any]:
    """``render(view(state), as_of)``: the document straight from a state (tests, replay)."""
    return render(view(state), as_of)


def window_values(state: ProfileState, as_of: int) -> list[int]:
    """Every series' window value as of a time, by series index, straight from the state.

    Equal to ``window_sum(view(state).buckets.get(s.name), s, as_of)`` for each series ``s``
    (counts, cents and sessions), without building the view: one pass over the live buckets.
    The training snapshots use it (see :func:`models.features.state_features`).

    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="page_view", ts=86_400_000, customer_id="42",
    ...                     session_id="s1"), 600_000)
    >>> v = window_values(s, 86_400_000 + 7_200_000)
    >>> [v[SERIES_BY_NAME[n].idx] for n in ("pv1h", "pv24h", "se7d")]
    [0, 1, 1]
    """
    a = state.current
    sums = [0] * len(SERIES)
    newest = a.last
    if newest is None:
        return sums
    ranges = [(max((newest + lw) // g, (as_of + lw) // g), as_of // g) for lw, g in _LIVE_SPECS]
    shift, mask = KEY_SHIFT, KEY_MASK
    for key, val in a.buckets.items():
        idx = key >> shift
        lo, hi = ranges[idx]
        if lo <= key & mask <= hi:
            sums[idx] += val
    if a.sids or a.runs:
        for s in _SESSION_SERIES:
            g = s.gran
            lo, hi = ranges[s.idx]
            firsts = chain(a.sids.values(), a.runs)
            sums[s.idx] = sum(1 for first in firsts if lo <= first // g <= hi)
    return sums

"""The public profile document as of a time, computed from a view."""

from __future__ import annotations

from itertools import chain
from typing import Any

from features import interest as _interest
from features.profile.codec import (
    view,
)
from features.profile.fold import (
    _LIVE_SPECS,
)
from features.profile.state import (
    _SESSION_SERIES,
    CART_ABANDON_MS,
    COUNT_FEATURES,
    REVENUE_FEATURES,
    ProfileState,
    ProfileView,
)
from features.windows import (
    DAY,
    KEY_MASK,
    KEY_SHIFT,
    SERIES,
    window_sum,
)
from schemas.events import format_ts


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

    >>> from features.profile import *
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="page_view", ts=86_400_000, customer_id="42",
    ...                     session_id="s1"), 600_000)
    >>> v = window_values(s, 86_400_000 + 7_200_000)
    >>> from features.windows import SERIES_BY_NAME
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

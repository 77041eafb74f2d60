"""Model inputs: a customer's features as of a time, from the same render the profile uses.

One definition for training and serving: the dataflow snapshots ``feature_vector(view(state), ts)``
for the labels, serving scores ``feature_vector(view, as_of)`` (or :func:`features_from_document`
of the profile document it already rendered), so there is no training/serving skew. Every value
is a finite float and the keys always come in the order of :data:`FEATURE_NAMES`.

Features (``log1p`` is ``log(1 + x)``, applied to non-negative values; negative net revenue is
clamped to 0 first):

==================================  ============================================================
feature                             definition (profile fields as of ``as_of``)
==================================  ============================================================
``log_page_views_24h/7d``           log1p of ``page_views_24h``, ``_7d``
``log_product_views_24h/7d``        log1p of the product views in the same windows
``log_add_to_carts_24h/7d``         log1p of the add-to-carts in the same windows
``log_sessions_7d/30d``             log1p of ``sessions_7d``, ``sessions_30d``
``log_purchases_7d/30d/90d``        log1p of ``purchases_7d``, ``purchases_30d``, ``purchases_90d``
``log_revenue_7d/30d/90d``          log1p of the net revenue (currency units) in the same windows
``log_purchases_total``             log1p of lifetime purchases
``log_revenue_total``               log1p of lifetime net revenue
``log_avg_order_value``             log1p of ``avg_order_value``; 0 when never purchased
``never_purchased``                 1.0 when the customer has no purchase, else 0.0
``log_days_since_last_purchase``    log1p of ``days_since_last_purchase``; 0 when never purchased
                                    (``never_purchased`` carries that information instead of a null)
``log_days_since_last_seen``        log1p of ``days_since_last_seen``; 0 when never seen (or when
                                    ``as_of`` is before the last event)
``log_active_days``                 log1p of the days from the first to the last event; 0 if none
                                    (not ``tenure_days``, which keeps growing while a customer is
                                    away and so moves with ``days_since_last_seen``)
``log_events_total``                log1p of lifetime events
``log_cart_items``                  log1p of the items in the cart
``log_cart_value``                  log1p of the cart value (currency units)
``cart_abandoned``                  1.0 when the cart is abandoned (items, 30 min quiet), else 0
``n_top_categories``                number of distinct top categories (0 to 3)
==================================  ============================================================

The one-hour windows of the profile are left out on purpose: training snapshots describe a
customer just *before* the first event of a day (or an idle day), where they are almost always 0,
so a model could not learn them and would extrapolate wildly mid-session. (On the simulator,
leaving them out raised the churn AUC from 0.959 to 0.970.)

Examples
--------
>>> from features.profile import ingest, new_state, view
>>> from schemas import Event
>>> T = 1767323045000                                    # 2026-01-02T03:04:05Z
>>> s = new_state("c:42")
>>> _ = ingest(s, Event(event_id="1", type="purchase", ts=T, customer_id="42", total=99.0,
...                     category="shoes"), lateness_ms=600_000)
>>> f = feature_vector(view(s), T + 9 * 86_400_000)
>>> list(f) == list(FEATURE_NAMES)
True
>>> f["never_purchased"], round(f["log_days_since_last_purchase"], 4), f["n_top_categories"]
(0.0, 2.3026, 1.0)
>>> round(f["log_purchases_30d"], 4), f["log_purchases_7d"], round(f["log_revenue_total"], 4)
(0.6931, 0.0, 4.6052)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from features.profile import (
    CART_ABANDON_MS,
    COUNT_FEATURES,
    REVENUE_FEATURES,
    ProfileState,
    ProfileView,
    render,
    window_values,
)
from features.windows import DAY
from schemas.events import parse_ts

__all__ = ["FEATURE_NAMES", "feature_vector", "features_from_document", "state_features"]

#: Hour windows are not model inputs (see the module docstring).
_COUNTS: Final = tuple(name for name, _ in COUNT_FEATURES if not name.endswith("_1h"))
_REVENUES: Final = tuple(name for name, _, _ in REVENUE_FEATURES)

#: Every feature, in the order :func:`feature_vector` returns them.
FEATURE_NAMES: Final[tuple[str, ...]] = (
    *(f"log_{n}" for n in _COUNTS),
    *(f"log_{n}" for n in _REVENUES),
    "log_purchases_total",
    "log_revenue_total",
    "log_avg_order_value",
    "never_purchased",
    "log_days_since_last_purchase",
    "log_days_since_last_seen",
    "log_active_days",
    "log_events_total",
    "log_cart_items",
    "log_cart_value",
    "cart_abandoned",
    "n_top_categories",
)


def _log(x: Any) -> float:
    """log1p of a non-negative number; ``None``, negatives and non-finite values give 0."""
    if x is None:
        return 0.0
    v = float(x)
    if not v > 0.0 or math.isinf(v):
        return 0.0
    return math.log1p(v)


def features_from_document(doc: Mapping[str, Any]) -> dict[str, float]:
    """The model features of a rendered profile document (:func:`features.profile.render`).

    Parameters
    ----------
    doc
        The public profile document as of some time.

    Returns
    -------
    dict[str, float]
        The features of the module docstring, keys in :data:`FEATURE_NAMES` order.

    Examples
    --------
    >>> from features.profile import ProfileView, render
    >>> doc = render(ProfileView(key="c:1"), as_of=0)             # a customer never seen
    >>> f = features_from_document(doc)
    >>> f["never_purchased"], sum(f.values())
    (1.0, 1.0)
    """
    f: dict[str, float] = {}
    for n in _COUNTS:
        f[f"log_{n}"] = _log(doc.get(n))
    for n in _REVENUES:
        f[f"log_{n}"] = _log(doc.get(n))
    f["log_purchases_total"] = _log(doc.get("purchases_total"))
    f["log_revenue_total"] = _log(doc.get("revenue_total"))
    f["log_avg_order_value"] = _log(doc.get("avg_order_value"))
    never = not doc.get("purchases_total") and doc.get("last_purchase_ts") is None
    f["never_purchased"] = 1.0 if never else 0.0
    f["log_days_since_last_purchase"] = _log(doc.get("days_since_last_purchase"))
    f["log_days_since_last_seen"] = _log(doc.get("days_since_last_seen"))
    first, last = doc.get("first_seen_ts"), doc.get("last_seen_ts")
    span = None if first is None or last is None else _span_days(parse_ts(first), parse_ts(last))
    f["log_active_days"] = _log(span)
    f["log_events_total"] = _log(doc.get("events_total"))
    f["log_cart_items"] = _log(doc.get("cart_items"))
    f["log_cart_value"] = _log(doc.get("cart_value"))
    f["cart_abandoned"] = 1.0 if doc.get("cart_abandoned") else 0.0
    f["n_top_categories"] = float(len(doc.get("top_categories") or ()))
    return f


def feature_vector(v: ProfileView, as_of_ms: int) -> dict[str, float]:
    """The model features of a profile view as of a time.

    Parameters
    ----------
    v
        A view: :func:`features.profile.view` of a state, or ``from_fields`` of its Redis hash.
    as_of_ms
        Epoch milliseconds (event time).

    Returns
    -------
    dict[str, float]
        ``features_from_document(render(v, as_of_ms))``: keys in :data:`FEATURE_NAMES` order.

    Examples
    --------
    >>> from features.profile import ProfileView
    >>> v = ProfileView(key="a:dev", first_seen_ts=0, last_seen_ts=0, events_total=1,
    ...                 counts={"page_view": 1}, buckets={"pv24h": {0: 1}})
    >>> f = feature_vector(v, as_of_ms=2 * 86_400_000)
    >>> round(f["log_days_since_last_seen"], 4), f["log_page_views_24h"], f["never_purchased"]
    (1.0986, 0.0, 1.0)
    """
    return features_from_document(render(v, as_of_ms))


_COUNT_IDX: Final = tuple((f"log_{n}", s.idx) for n, s in COUNT_FEATURES if n in _COUNTS)
_REVENUE_IDX: Final = tuple((f"log_{n}", p.idx, m.idx) for n, p, m in REVENUE_FEATURES)


def _span_days(first: int | None, last: int | None) -> float | None:
    return None if first is None or last is None else (last - first) / DAY


def _log_days(as_of_ms: int, ref: int | None) -> float:
    if ref is None or as_of_ms < ref:
        return 0.0
    return _log(round((as_of_ms - ref) / DAY, 3))


def state_features(state: ProfileState, as_of_ms: int) -> dict[str, float]:
    """``feature_vector(view(state), as_of_ms)`` computed straight from a profile state.

    The dataflow's training snapshots use it: the same values (a property test holds them
    equal) at a fraction of the cost, since neither the view nor the document is built.

    Examples
    --------
    >>> from features.profile import ingest, new_state, view
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="purchase", ts=1767323045000, customer_id="42",
    ...                     total=99.0, category="shoes"), lateness_ms=600_000)
    >>> later = 1767323045000 + 86_400_000
    >>> state_features(s, later) == feature_vector(view(s), later)
    True
    """
    a = state.current
    sums = window_values(state, as_of_ms)
    f: dict[str, float] = {}
    for name, idx in _COUNT_IDX:
        f[name] = _log(sums[idx])
    for name, pos, neg in _REVENUE_IDX:
        f[name] = _log((sums[pos] - sums[neg]) / 100)
    n = a.purchases
    f["log_purchases_total"] = _log(n)
    f["log_revenue_total"] = _log(a.revenue / 100)
    f["log_avg_order_value"] = _log(round(a.revenue / n / 100, 2)) if n else 0.0
    f["never_purchased"] = 1.0 if not n and a.last_purchase is None else 0.0
    f["log_days_since_last_purchase"] = _log_days(as_of_ms, a.last_purchase)
    f["log_days_since_last_seen"] = _log_days(as_of_ms, a.last)
    f["log_active_days"] = _log(_span_days(a.first, a.last))
    f["log_events_total"] = _log(a.events)
    f["log_cart_items"] = _log(a.cart_items)
    f["log_cart_value"] = _log(a.cart_cents / 100)
    abandoned = a.cart_items > 0 and a.last is not None and as_of_ms - a.last >= CART_ABANDON_MS
    f["cart_abandoned"] = 1.0 if abandoned else 0.0
    f["n_top_categories"] = float(min(3, len(a.interest))) if a.last is not None else 0.0
    return f

"""Product knowledge from the stream: popularity, trending and co-occurrence, per product.

Everything here is **integer counts in event-time buckets**, so a product's state depends only on
the *set* of touches it received, never on their order, on how the stream was cut into batches
or on which process sent them (the bucket windows below are the only forgetting, and they are
order-independent too). Scores are computed from the counts when the state is projected.

* **Popularity**: weighted touches (``product_view`` 1, ``add_to_cart`` 3, one purchase line 5)
  in day buckets (the last :data:`POP_DAYS` days) and hour buckets (the last :data:`POP_HOURS`
  hours). ``popularity`` as of ``t`` is the day counts decayed with a half-life of
  :data:`POP_HALF_LIFE_MS` (7 days) from each day's middle; ``trending`` is the weight of the
  last 24 hours minus the mean daily weight of the 7 days before them (growth, not size: an
  always-popular product is not trending).
* **Co-occurrence**, three relations (:data:`RELATIONS`): ``view`` (viewed in the same session),
  ``cart`` (added to the cart in the same session) and ``buy`` (bought in the same order), each a
  count per neighbour per event-time week over the last :data:`WEEKS` weeks, decayed with the
  relation's half-life (:data:`HALF_LIFE_MS`: 7, 14 and 28 days). A session pairs each new
  product with the :data:`PAIR_WINDOW` distinct products seen just before it in the session.
  The projection keeps the :data:`TOP_K` strongest per relation.
* **Memory per product**: ``POP_DAYS + POP_HOURS`` popularity counters, and per relation the
  products that co-occurred with it within the window, each with at most ``WEEKS`` counters,
  up to :data:`MAX_NEIGHBOURS` (a safety bound: beyond it new neighbours are refused and
  counted, the one case where arrival order would matter). Measured sizes: README,
  "Recommendations".

A bucket window is a ring: a count older than the newest bucket minus the window is ignored,
and buckets that fall out of the window when a newer one arrives are dropped. The final content
is therefore the counts of the buckets in the last window, whatever the arrival order (for the
co-occurrence weeks: whatever the order within a week, see :class:`Neighbours`).

Examples
--------
>>> s = ProductState("p-1")
>>> s.touch("product_view", 0, "shoes", 20.0)
>>> s.touch("add_to_cart", HOUR, "shoes", 18.0)
>>> s.pair("view", "p-2", "shoes", 2 * HOUR)
>>> s.category, s.price, s.first_seen, s.last_seen, s.touches
('shoes', 18.0, 0, 3600000, 2)
>>> doc = project(s)
>>> doc["neighbours"]["view"]
[['p-2', 1.0, 'shoes']]
>>> popularity(doc, 0), popularity(doc, HOUR + 7 * DAY)
(4.0, 2.0)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MINUTE: Final = 60_000
HOUR: Final = 3_600_000
DAY: Final = 86_400_000
WEEK: Final = 7 * DAY

#: Co-occurrence relations: viewed in one session, added to cart in one session, one order.
RELATIONS: Final = ("view", "cart", "buy")
HALF_LIFE_MS: Final = {"view": 7 * DAY, "cart": 14 * DAY, "buy": 28 * DAY}
#: Weeks of co-occurrence counts kept (the current one and the ones before).
WEEKS: Final = 6
#: Most neighbours a relation holds (a safety bound: beyond it new neighbours are refused, and
#: counted); neighbours projected per relation (Redis).
MAX_NEIGHBOURS: Final = 2000
TOP_K: Final = 20

#: Popularity weight of a touch by event type (one purchase line counts once).
POP_WEIGHTS: Final = {"product_view": 1, "add_to_cart": 3, "purchase": 5}
POP_DAYS: Final = 28
POP_HOURS: Final = 48
POP_HALF_LIFE_MS: Final = 7 * DAY

#: Longest product id and category kept (longer ones are cut, like categories in profiles).
MAX_PRODUCT_ID: Final = 128


class Ring:
    """Counts per bucket over the last ``size`` buckets (order-independent, see the module).

    >>> r = Ring(3)
    >>> [r.add(i, 1) for i in (5, 2, 7, 6, 5)]
    [True, False, True, True, True]
    >>> r.counts, r.newest, r.add(4, 1)
    ({5: 2, 7: 1, 6: 1}, 7, False)
    """

    __slots__ = ("counts", "newest", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.newest = -(2**62)
        self.counts: dict[int, int] = {}

    def add(self, idx: int, n: int) -> bool:
        """Add ``n`` to bucket ``idx``; False (ignored) when it is older than the window."""
        if idx <= self.newest - self.size:
            return False
        if idx > self.newest:
            self.newest = idx
            low = idx - self.size
            old = [k for k in self.counts if k <= low]
            for k in old:
                del self.counts[k]
        self.counts[idx] = self.counts.get(idx, 0) + n
        return True

    def __getstate__(self) -> tuple[int, int, dict[int, int]]:
        return self.size, self.newest, self.counts

    def __setstate__(self, state: tuple[int, int, dict[int, int]]) -> None:
        self.size, self.newest, self.counts = state


@dataclass(slots=True)
class Neighbours:
    """One relation's co-occurrence: per neighbour, counts per week (window :data:`WEEKS`).

    Every neighbour of the window is counted (the window is the bound), up to the safety bound
    :data:`MAX_NEIGHBOURS`: beyond it a new neighbour is refused and counted, the one case where
    the arrival order would matter.

    >>> n = Neighbours()
    >>> for o, wk in [("a", 0), ("b", 0), ("b", 1), ("c", WEEKS)]:
    ...     _ = n.add(o, "x", wk)
    >>> n.weeks, n.add("d", "x", 0), n.late  # week 0 left the window with "a"
    ({'b': {1: 1}, 'c': {6: 1}}, False, 1)
    """

    newest: int = -(2**62)
    weeks: dict[str, dict[int, int]] = field(default_factory=dict)
    #: neighbour -> (week, category) of its newest co-occurrence (ties: the greatest name)
    categories: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: new neighbours not added because the relation held :data:`MAX_NEIGHBOURS`
    refused: int = 0
    #: co-occurrences older than the window
    late: int = 0

    def add(self, other: str, category: str, week: int) -> bool:
        """Count one co-occurrence with ``other`` in ``week`` (False: ignored)."""
        if week <= self.newest - WEEKS:
            self.late += 1
            return False
        if week > self.newest:
            self.newest = week
            low = week - WEEKS
            for o in list(self.weeks):
                d = self.weeks[o]
                for k in [k for k in d if k <= low]:
                    del d[k]
                if not d:
                    del self.weeks[o]
                    self.categories.pop(o, None)
        counts = self.weeks.get(other)
        if counts is None:
            if len(self.weeks) >= MAX_NEIGHBOURS:
                self.refused += 1
                return False
            counts = self.weeks[other] = {}
        counts[week] = counts.get(week, 0) + 1
        cur = self.categories.get(other)
        if cur is None or (week, category) > cur:
            self.categories[other] = (week, category)
        return True


@dataclass(slots=True)
class ProductState:
    """One product's knowledge (see the module docstring). ``price_ts`` orders the last price
    (the newest touch's, ties: the highest); ``touches`` counts every touch received."""

    product_id: str
    category: str = ""
    category_ts: int = -(2**62)
    price: float | None = None
    price_ts: int = -(2**62)
    first_seen: int | None = None
    last_seen: int | None = None
    touches: int = 0
    days: Ring = field(default_factory=lambda: Ring(POP_DAYS))
    hours: Ring = field(default_factory=lambda: Ring(POP_HOURS))
    relations: dict[str, Neighbours] = field(default_factory=dict)

    def _seen(self, ts: int) -> None:
        self.touches += 1
        if self.first_seen is None or ts < self.first_seen:
            self.first_seen = ts
        if self.last_seen is None or ts > self.last_seen:
            self.last_seen = ts

    def touch(self, kind: str, ts: int, category: str | None, price: float | None) -> None:
        """A ``product_view``, ``add_to_cart`` or purchase line of this product at ``ts``."""
        self._seen(ts)
        if category and (ts, category) > (self.category_ts, self.category):
            self.category, self.category_ts = category, ts
        if price is not None and price > 0 and (ts, price) > (self.price_ts, self.price or 0.0):
            self.price, self.price_ts = price, ts
        w = POP_WEIGHTS.get(kind, 0)
        if w:
            self.days.add(ts // DAY, w)
            self.hours.add(ts // HOUR, w)

    def pair(self, relation: str, other: str, other_category: str | None, ts: int) -> None:
        """``other`` co-occurred with this product in ``relation`` at ``ts``."""
        rel = self.relations.get(relation)
        if rel is None:
            rel = self.relations[relation] = Neighbours()
        rel.add(other, other_category or "", ts // WEEK)

    def size(self) -> int:
        """Counters held (the memory bound's unit)."""
        n = len(self.days.counts) + len(self.hours.counts)
        return n + sum(len(d) for r in self.relations.values() for d in r.weeks.values())


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def neighbour_weights(rel: Neighbours, relation: str, at: int) -> list[tuple[str, float]]:
    """A relation's neighbours with their decayed weight as of ``at`` (weeks count from their
    middle; never above the count), strongest first (ties: by id), at most :data:`TOP_K`.

    >>> n = Neighbours()
    >>> _ = n.add("a", "x", 0), n.add("b", "x", 0), n.add("b", "x", 1)
    >>> neighbour_weights(n, "view", WEEK)
    [('b', 1.70711), ('a', 0.707107)]
    """
    h = HALF_LIFE_MS[relation]
    factors = {
        wk: 2.0 ** (-max(0, at - (wk * WEEK + WEEK // 2)) / h)
        for wk in range(rel.newest - WEEKS + 1, rel.newest + 1)
    }
    out: list[tuple[float, str]] = []
    for other, d in rel.weeks.items():
        if len(d) == 1:
            ((wk, n),) = d.items()
            out.append((n * factors[wk], other))
        else:
            out.append((sum(d[wk] * factors[wk] for wk in sorted(d)), other))
    top = heapq.nsmallest(TOP_K, out, key=lambda t: (-t[0], t[1]))
    return [(o, _sig(w)) for w, o in top]


def day_popularity(days: Mapping[int, int], at: int) -> float:
    """Weighted day counts decayed to ``at`` (half-life 7 days, from each day's middle)."""
    s = 0.0
    for d in sorted(days):
        mid = d * DAY + DAY // 2
        s += days[d] * 2.0 ** (-max(0, at - mid) / POP_HALF_LIFE_MS)
    return s


def trend_score(hours: Mapping[int, int], days: Mapping[int, int], at: int) -> float:
    """Weight of the 24 hours up to ``at`` minus the mean daily weight of the 7 days before.

    >>> trend_score({10: 4}, {0: 7}, 11 * HOUR)
    4.0
    >>> trend_score({10: 4}, {0: 7}, 40 * HOUR)  # hour 10 is more than 24 h ago
    0.0
    """
    now_h = at // HOUR
    last = sum(c for h, c in hours.items() if now_h - 24 < h <= now_h)
    start_day = (now_h - 24) * HOUR // DAY
    before = sum(c for d, c in days.items() if start_day - 7 <= d < start_day)
    return _sig(max(0.0, last - before / 7))


def project(state: ProductState) -> dict[str, Any]:
    """The Redis projection of a product (a JSON document; absolute, deterministic).

    Fields: ``id``, ``category``, ``price``, ``first_seen``, ``last_seen`` (epoch ms),
    ``touches``, ``popularity`` and ``trending`` as of ``last_seen``, ``lpop`` (log2 of the
    popularity plus ``last_seen`` in half-lives: comparable between products and times), and
    ``neighbours``: relation -> ``[[product, weight, category], ...]`` as of ``last_seen``.
    """
    at = state.last_seen or 0
    pop = day_popularity(state.days.counts, at)
    neighbours: dict[str, list[list[Any]]] = {}
    for relation in RELATIONS:
        rel = state.relations.get(relation)
        if rel is not None and rel.weeks:
            neighbours[relation] = [
                [o, w, rel.categories.get(o, (0, ""))[1]]
                for o, w in neighbour_weights(rel, relation, at)
            ]
    return {
        "id": state.product_id,
        "category": state.category,
        "price": state.price,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "touches": state.touches,
        "popularity": _sig(pop),
        "trending": trend_score(state.hours.counts, state.days.counts, at),
        "lpop": lpop(pop, at),
        "neighbours": neighbours,
    }


def lpop(pop: float, at: int) -> float:
    """``log2(pop) + at / half-life``: popularity on a scale that does not move with time, so
    products last touched at different times compare (``-inf`` when nothing counts).

    >>> lpop(4.0, 0), lpop(2.0, POP_HALF_LIFE_MS)
    (2.0, 2.0)
    """
    if pop <= 0:
        return -math.inf
    return round(math.log2(pop) + at / POP_HALF_LIFE_MS, 9)


def popularity(doc: Mapping[str, Any], at: int) -> float:
    """A projected product's popularity as of ``at`` (its stored value decayed further)."""
    last = int(doc.get("last_seen") or 0)
    value = float(doc.get("popularity") or 0.0)
    return value * float(2.0 ** (-max(0, at - last) / POP_HALF_LIFE_MS))


def decayed(weight: float, relation: str, since: int, at: int) -> float:
    """A neighbour weight stored as of ``since`` decayed to ``at``.

    >>> decayed(4.0, "view", 0, 14 * DAY)
    1.0
    """
    return weight * float(2.0 ** (-max(0, at - since) / HALF_LIFE_MS[relation]))


# ---------------------------------------------------------------------------------------------
# Sessions: which products co-occurred (the pairs the product states count)


#: Events without a ``session_id`` start a new session after this gap (as in profiles).
SESSION_GAP_MS: Final = 30 * MINUTE
#: A session's state is forgotten this long after its last event (event time).
SESSION_KEEP_MS: Final = 6 * HOUR
#: Distinct products remembered per session and relation, and how many of the last of them a
#: new product pairs with.
SESSION_PRODUCTS: Final = 12
PAIR_WINDOW: Final = 4


@dataclass(slots=True)
class Basket:
    """One session's distinct products so far, per relation (``view``, ``cart``)."""

    last: int
    products: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, relation: str, product: str, category: str) -> list[tuple[str, str]]:
        """Add a product; the ``(other, other_category)`` it now co-occurs with: the last
        :data:`PAIR_WINDOW` distinct products before it (a product seen before: none).

        >>> b = Basket(0)
        >>> b.add("view", "a", "x"), b.add("view", "b", "y"), b.add("view", "a", "x")
        ([], [('a', 'x')], [])
        """
        seen = self.products.setdefault(relation, {})
        if product in seen:
            return []
        pairs = list(seen.items())[-PAIR_WINDOW:]
        seen[product] = category
        if len(seen) > SESSION_PRODUCTS:
            del seen[next(iter(seen))]
        return pairs


#: What a session contributes: (product, kind, ts, category, price) touches and
#: (relation, a, a_category, b, b_category, ts) pairs (each pair counted on both products).
Touch = tuple[str, str, int, str, float | None]
Pair = tuple[str, str, str, str, str, int]


def session_key(customer_id: str | None, anonymous_id: str | None, session_id: str | None) -> str:
    """The session an event belongs to: its ``session_id``, else its visitor (split by gaps).

    >>> session_key("c1", "a1", "s9"), session_key("c1", "a1", None), session_key(None, "a", None)
    ('s:s9', 'v:a1', 'v:a')
    """
    if session_id:
        return "s:" + session_id
    return "v:" + (anonymous_id or customer_id or "")


def order_pairs(items: Iterable[tuple[str, str]], ts: int) -> list[Pair]:
    """The ``buy`` pairs of one order: every two distinct products of its lines.

    >>> order_pairs([("a", "x"), ("b", "y"), ("a", "x")], 5)
    [('buy', 'a', 'x', 'b', 'y', 5)]
    """
    distinct: dict[str, str] = {}
    for p, c in items:
        distinct.setdefault(p, c)
    ps = list(distinct.items())
    return [
        ("buy", a, ca, b, cb, ts) for i, (a, ca) in enumerate(ps) for b, cb in ps[i + 1 :] if a != b
    ]


def neighbour_lists(doc: Mapping[str, Any]) -> dict[str, list[tuple[str, float, str]]]:
    """The ``neighbours`` of a projected product as typed tuples (for readers)."""
    out: dict[str, list[tuple[str, float, str]]] = {}
    for rel, items in (doc.get("neighbours") or {}).items():
        if rel in HALF_LIFE_MS:
            out[rel] = [(str(i[0]), float(i[1]), str(i[2]) if len(i) > 2 else "") for i in items]
    return out

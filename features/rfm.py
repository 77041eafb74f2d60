"""RFM value tiers: recency, frequency and monetary quintiles against the live customer population.

Every customer with at least one purchase has an :class:`RfmPoint` (last purchase time, number of
purchases, net revenue). One :class:`RfmPopulation` per dataflow holds the distribution of all
current points and is updated incrementally (:meth:`RfmPopulation.update` with the old and the new
point of a customer). From time to time the dataflow publishes its :class:`RfmBoundaries` (four
cut points per dimension, one Redis string); the dataflow and serving then :func:`score` a point
against the published boundaries (1..5 per dimension) and name its :func:`segment`.

Approximation
-------------
The population is kept as three fixed histograms, so memory is bounded (at most about 3,600
non-empty bins in all) whatever the number of customers; their bins (hourly and daily for
recency, about 5 % wide for frequency above 50, 2 % for monetary) are described in
:mod:`features.rfm_bins`.

**Cut points.** With ``N`` customers, the k-th cut point (k = 1..4) is the lowest bin edge ``e``
with ``count(values < e) >= k * N / 5``, i.e. the upper edge of the bin holding the
``ceil(k * N / 5)``-th smallest value: the exact quantile rounded *up* to the next bin edge (within
1 purchase up to 50 purchases and about 5 % above, 2 % for monetary, 1 hour for the last 30 days
and 1 day for older recency). Only if that bin is the open-ended top bin is its lower edge used.

**Scores.** A value's score is ``1 + (number of cut points <= value)``: a value on a cut point
goes to the higher quintile. Equivalently, the score is the exact "rank-min" quintile (a tie
block gets the quintile in which it starts) of the values rounded down to their bin's lower edge.
Hence equal values always get equal scores, a higher value never gets a lower score, and all
customers with 1 purchase get ``f = 1`` (with 70 % one-time buyers, f scores 2 and 3 stay empty).
Each score's share of the population is within ``w + 1/N`` of 20 %, where ``w`` is the largest
share of customers in one bin (for continuous monetary values of a few thousand customers,
within about 1-2 points of 20 %).

**Recency.** ``r`` compares ``last_purchase_ts`` itself with the published recency cut points
(timestamps), more recent scoring higher, so it does not depend on the read time: ``r`` is the
recency *relative to the population's purchase recency at the last publish*. A customer's ``r``
does not decay between two publishes; it moves when the boundaries are republished.

Boundaries exist once the population has at least ``min_population`` (default 20) customers;
before that points are ``"unscored"``, and customers without a purchase are ``"prospect"``.

Segments
--------
:func:`segment` names the (R, F) cell with the first matching row of this table (M does not
take part, as in the classic R-F grid):

=====================  =========  =========
segment                R          F
=====================  =========  =========
``champions``          4-5        4-5
``loyal``              3-5        3-5
``potential_loyalist`` 4-5        2 (3 is loyal)
``new_customers``      5          1
``promising``          4          1
``need_attention``     3          2 (3 is loyal)
``about_to_sleep``     3          1
``at_risk``            1-2        3-4
``cant_lose_them``     1-2        5
``hibernating``        1-2        1-2
=====================  =========  =========

Examples
--------
>>> pop = RfmPopulation()
>>> DAY = 86_400_000
>>> for i in range(100):                      # customer i bought i days ago
...     pop.update(None, RfmPoint(last_purchase_ts=1_767_225_600_000 - i * DAY,
...                               frequency=i // 2 + 1, monetary=10.0 * (i + 1)))
>>> pop.size
100
>>> b = pop.boundaries(computed_at_ms=1_767_225_600_000)
>>> b.f, b.m, b.population        # the 20th, 40th, ... smallest value rounded up to a bin edge
((11, 21, 31, 41), (203.557, 407.092, 604.917, 814.138), 100)
>>> score(RfmPoint(1_767_225_600_000, 90, 900.0), b)
(5, 5, 5)
>>> score(RfmPoint(1_767_225_600_000 - 70 * DAY, 1, 10.0), b)
(2, 1, 1)
>>> segment(5, 5, 5), segment(2, 1, 1), segment(5, 1, 3)
('champions', 'hibernating', 'new_customers')
>>> RfmBoundaries.decode(b.encode()) == b
True
>>> rfm_fields(RfmPoint(1_767_225_600_000 - 30 * DAY, 15, 400.0), b)
{'rfm_r': 4, 'rfm_f': 2, 'rfm_m': 2, 'rfm_segment': 'potential_loyalist'}
>>> rfm_fields(None, b)["rfm_segment"], rfm_fields(RfmPoint(0, 1, 5.0), None)["rfm_segment"]
('prospect', 'unscored')
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

import msgspec

from features.rfm_bins import (
    DAY_MS,
    FREQUENCY_EDGES,
    HOUR_MS,
    MONETARY_EDGES,
)
from features.rfm_bins import R_OLDER as _R_OLDER
from features.rfm_bins import add_count as _add
from features.rfm_bins import cuts as _cuts
from features.rfm_bins import keys_in as _keys_in
from features.rfm_bins import money as _money
from features.rfm_bins import r_key as _r_key
from features.rfm_bins import r_origins as _r_origins
from features.rfm_bins import static_upper as _static_upper

__all__ = [
    "SEGMENTS",
    "SEGMENT_TABLE",
    "RfmBoundaries",
    "RfmPoint",
    "RfmPopulation",
    "rfm_fields",
    "rfm_point",
    "score",
    "segment",
]

#: Default smallest population that gets boundaries.
MIN_POPULATION: Final = 20
#: Version of the encoded boundaries.
BOUNDARIES_VERSION: Final = 1


class RfmPoint(msgspec.Struct, frozen=True):
    """A customer's current RFM values; only customers with at least one purchase have one.

    ``last_purchase_ts`` is epoch milliseconds, ``frequency`` is ``purchases_total``,
    ``monetary`` is ``revenue_total`` (net of refunds, may be zero or negative).
    """

    last_purchase_ts: int
    frequency: int
    monetary: float
    #: the customer's first event (the origin of its buy-till-you-die history)
    first_ts: int | None = None


def rfm_point(
    purchases_total: int,
    revenue_total: float,
    last_purchase_ts: int | None,
    first_ts: int | None = None,
) -> RfmPoint | None:
    """The point of a profile, or ``None`` for a customer without a purchase.

    >>> rfm_point(2, 30.5, 1_767_225_600_000)
    RfmPoint(last_purchase_ts=1767225600000, frequency=2, monetary=30.5, first_ts=None)
    >>> rfm_point(0, -5.0, None) is None
    True
    """
    if purchases_total < 1 or last_purchase_ts is None:
        return None
    return RfmPoint(int(last_purchase_ts), int(purchases_total), float(revenue_total), first_ts)


def _increasing(name: str, cuts: Sequence[float]) -> None:
    if any(a > b for a, b in pairwise(cuts)):
        raise ValueError(f"{name} cut points must be non-decreasing")


class RfmBoundaries(msgspec.Struct, frozen=True):
    """The 2nd..5th quintile cut points of each dimension, as published by the dataflow.

    ``r`` are timestamps (epoch ms) on ``last_purchase_ts``, ``f`` purchase counts, ``m`` net
    revenue; a value ``>=`` the k-th cut point scores at least ``k + 1``. ``population`` is the
    number of customers they were computed from and ``computed_at_ms`` the time given by the
    caller (the event-time watermark). :meth:`encode` gives compact JSON for one Redis string.
    """

    r: tuple[int, int, int, int]
    f: tuple[int, int, int, int]
    m: tuple[float, float, float, float]
    population: int
    computed_at_ms: int
    v: int = BOUNDARIES_VERSION
    #: the buy-till-you-die population parameters ``(r, alpha, a, b)`` (:mod:`models.btyd`,
    #: days), fitted by the same owner once per day of event time, and the day they are as of
    btyd: tuple[float, float, float, float] | None = None
    btyd_day: int | None = None

    def __post_init__(self) -> None:
        _increasing("r", self.r)
        _increasing("f", self.f)
        _increasing("m", self.m)
        if self.population < 0:
            raise ValueError("population must be >= 0")

    def encode(self) -> bytes:
        """Compact JSON, e.g. ``{"r":[...],"f":[...],"m":[...],"population":..,...}``."""
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, data: bytes | str) -> RfmBoundaries:
        """Inverse of :meth:`encode`; raises ``msgspec.ValidationError``/``DecodeError``."""
        return _DECODER.decode(data)


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(RfmBoundaries)


@dataclass(slots=True)
class RfmPopulation:
    """The distribution of the current points of all customers: fixed, bounded histograms.

    Single owner in the dataflow; it lives in Bytewax snapshots, so it pickles and compares equal
    after a round trip. ``update(old, new)`` replaces one customer's point (``None`` = absent);
    ``old`` must be exactly the point added before for that customer.

    >>> pop = RfmPopulation(min_population=2)
    >>> a, b = RfmPoint(1_000, 1, 5.0), RfmPoint(2_000, 3, 50.0)
    >>> pop.update(None, a); pop.update(None, b); pop.size
    2
    >>> pop.update(a, RfmPoint(3_000, 2, 20.0)); pop.size
    2
    >>> pop.update(b, None); pop.boundaries() is None, pop.size
    (True, 1)
    """

    min_population: int = MIN_POPULATION
    #: number of customers (points) in the population
    size: int = 0
    #: newest ``last_purchase_ts`` added since the population was last empty (recency origin)
    newest_ts: int | None = None
    r_counts: dict[int, int] = field(default_factory=dict, repr=False)
    f_counts: dict[int, int] = field(default_factory=dict, repr=False)
    m_counts: dict[int, int] = field(default_factory=dict, repr=False)

    def update(self, old: RfmPoint | None, new: RfmPoint | None) -> None:
        """A customer's point changed from ``old`` to ``new`` (``None`` = no point)."""
        if old == new:
            return
        if old is not None:
            self._remove(old)
        if new is not None:
            self._add(new)
        if self.size == 0:
            self.newest_ts = None  # the histograms are empty: back to the initial state

    def _add(self, p: RfmPoint) -> None:
        self._advance(p.last_purchase_ts)
        assert self.newest_ts is not None
        hour0, day0 = _r_origins(self.newest_ts)
        _add(self.r_counts, _r_key(p.last_purchase_ts, hour0, day0), 1)
        _add(self.f_counts, bisect_right(FREQUENCY_EDGES, p.frequency), 1)
        _add(self.m_counts, bisect_right(MONETARY_EDGES, _money(p.monetary)), 1)
        self.size += 1

    def _remove(self, p: RfmPoint) -> None:
        if self.newest_ts is None:
            raise ValueError("RfmPopulation.update: removing a point from an empty population")
        hour0, day0 = _r_origins(self.newest_ts)
        f_key = bisect_right(FREQUENCY_EDGES, p.frequency)
        m_key = bisect_right(MONETARY_EDGES, _money(p.monetary))
        r_key = _r_key(p.last_purchase_ts, hour0, day0)
        if not (r_key in self.r_counts and f_key in self.f_counts and m_key in self.m_counts):
            raise ValueError("RfmPopulation.update: removing a point that is not in the population")
        _add(self.r_counts, r_key, -1)
        _add(self.f_counts, f_key, -1)
        _add(self.m_counts, m_key, -1)
        self.size -= 1

    def _advance(self, ts: int) -> None:
        """Move the recency origin to a newer purchase, merging bins that fall out of the spans."""
        if self.newest_ts is None:
            self.newest_ts = ts
            return
        if ts <= self.newest_ts:
            return
        old_hour0, old_day0 = _r_origins(self.newest_ts)
        self.newest_ts = ts
        hour0, day0 = _r_origins(ts)
        if hour0 == old_hour0:
            return  # same hour (hence same day): no bin moves
        # hourly bins that left the 30 days, then daily bins that left the daily span; every
        # value of a bin maps to the bin of its lower edge (the coarser bins are aligned)
        moving = _keys_in(self.r_counts, old_hour0 * HOUR_MS, hour0 * HOUR_MS, HOUR_MS)
        moving += _keys_in(self.r_counts, old_day0 * DAY_MS, day0 * DAY_MS, DAY_MS)
        for key in dict.fromkeys(moving):  # (after a long jump the two ranges overlap)
            new_key = _r_key(key, hour0, day0)
            if new_key != key:
                _add(self.r_counts, new_key, self.r_counts.pop(key))

    def boundaries(self, computed_at_ms: int = 0) -> RfmBoundaries | None:
        """The current cut points, or ``None`` below ``min_population`` customers.

        Pass the event-time watermark as ``computed_at_ms`` (recorded, not used in the math).
        """
        n = self.size
        if n < max(1, self.min_population):
            return None
        assert self.newest_ts is not None
        hour0, day0 = _r_origins(self.newest_ts)
        first_hourly_edge = hour0 * HOUR_MS

        def r_upper(key: int) -> float:
            if key == _R_OLDER:
                return day0 * DAY_MS
            if key >= first_hourly_edge:
                return key + HOUR_MS
            return min(key + DAY_MS, first_hourly_edge)

        r = [int(c) for c in _cuts(self.r_counts, n, r_upper)]
        f = [int(c) for c in _cuts(self.f_counts, n, _static_upper(FREQUENCY_EDGES))]
        m = [float(c) for c in _cuts(self.m_counts, n, _static_upper(MONETARY_EDGES))]
        return RfmBoundaries(
            r=(r[0], r[1], r[2], r[3]),
            f=(f[0], f[1], f[2], f[3]),
            m=(m[0], m[1], m[2], m[3]),
            population=n,
            computed_at_ms=int(computed_at_ms),
        )


def score(point: RfmPoint, b: RfmBoundaries) -> tuple[int, int, int]:
    """``(r, f, m)``, each 1..5: one plus the number of cut points ``<=`` the value.

    More recent purchases, more purchases and more revenue score higher.

    >>> b = RfmBoundaries(r=(10, 20, 30, 40), f=(2, 2, 2, 3), m=(5.0, 10.0, 20.0, 40.0),
    ...                   population=100, computed_at_ms=0)
    >>> score(RfmPoint(last_purchase_ts=20, frequency=1, monetary=100.0), b)
    (3, 1, 5)
    >>> score(RfmPoint(last_purchase_ts=5, frequency=2, monetary=-3.0), b)
    (1, 4, 1)
    """
    return (
        1 + bisect_right(b.r, point.last_purchase_ts),
        1 + bisect_right(b.f, point.frequency),
        1 + bisect_right(b.m, _money(point.monetary)),
    )


#: All segment names :func:`segment` returns, plus the two of :func:`rfm_fields`.
SEGMENTS: Final = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose_them",
    "hibernating",
    "prospect",
    "unscored",
)

#: (segment, R scores, F scores): the first matching row wins (see the module docstring).
SEGMENT_TABLE: Final[tuple[tuple[str, frozenset[int], frozenset[int]], ...]] = (
    ("champions", frozenset({4, 5}), frozenset({4, 5})),
    ("loyal", frozenset({3, 4, 5}), frozenset({3, 4, 5})),
    ("potential_loyalist", frozenset({4, 5}), frozenset({2, 3})),
    ("new_customers", frozenset({5}), frozenset({1})),
    ("promising", frozenset({4}), frozenset({1})),
    ("need_attention", frozenset({3}), frozenset({2, 3})),
    ("about_to_sleep", frozenset({3}), frozenset({1})),
    ("at_risk", frozenset({1, 2}), frozenset({3, 4})),
    ("cant_lose_them", frozenset({1, 2}), frozenset({5})),
    ("hibernating", frozenset({1, 2}), frozenset({1, 2})),
)


def segment(r: int, f: int, m: int) -> str:
    """The segment of an ``(r, f, m)`` score (``m`` is accepted but not used).

    >>> segment(5, 4, 1), segment(4, 3, 1), segment(3, 2, 5), segment(1, 5, 5)
    ('champions', 'loyal', 'need_attention', 'cant_lose_them')
    """
    for name, rs, fs in SEGMENT_TABLE:
        if r in rs and f in fs:
            return name
    raise ValueError(f"RFM scores must be 1..5, got r={r}, f={f}, m={m}")


def rfm_fields(point: RfmPoint | None, b: RfmBoundaries | None) -> dict[str, int | str | None]:
    """The profile fields ``rfm_r``, ``rfm_f``, ``rfm_m`` and ``rfm_segment``.

    No point (no purchase): scores ``None``, segment ``"prospect"``; no boundaries yet (fewer
    than ``min_population`` customers): scores ``None``, segment ``"unscored"``.

    >>> rfm_fields(None, None)
    {'rfm_r': None, 'rfm_f': None, 'rfm_m': None, 'rfm_segment': 'prospect'}
    """
    if point is None or point.frequency < 1:
        return {"rfm_r": None, "rfm_f": None, "rfm_m": None, "rfm_segment": "prospect"}
    if b is None:
        return {"rfm_r": None, "rfm_f": None, "rfm_m": None, "rfm_segment": "unscored"}
    r, f, m = score(point, b)
    return {"rfm_r": r, "rfm_f": f, "rfm_m": m, "rfm_segment": segment(r, f, m)}

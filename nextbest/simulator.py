"""A deterministic shop simulator: a believable customer population emitting contract events.

The simulator produces the event stream of an online shop (see DESIGN.md, "Contracts") from a
population of customers with *latent traits* that really drive their behaviour, plus a *truth file*
holding those traits and the outcomes in a held-out final period, against which the online churn
and purchase-propensity models are judged.

Population
----------
``SimConfig.customers`` people are simulated:

* 15 % are one-time **browsers**: one to a few anonymous sessions (``anonymous_id`` only) within a
  few days, never logging in and never buying. They have no ``customer_id`` and no truth row.
* 85 % are **registered customers**, segment ``loyal`` (25 %), ``occasional`` (45 %) or
  ``churning`` (30 %). Half exist before the start (logged in on their devices); the other half
  join at a signup day spread uniformly over the simulated period: their first sessions (up to
  a week before) carry only the device's ``anonymous_id``, then a ``signup`` event carries both ids,
  after which events carry the ``customer_id`` (and, in 70 % of sessions, the ``anonymous_id``).
  The population does not depend on ``holdout_days``.

Latent traits of a registered customer (log-normal / beta spread around the segment's centre):

* ``visit_rate``: expected sessions per day (median loyal 0.7, occasional 0.18, churning 0.5);
* ``conversion``: probability that a session ends in a purchase (mean 0.2 / 0.1 / 0.12);
* ``churn_hazard``: per-day probability of becoming permanently inactive (~0.003 / 0.012 /
  0.06). The latent churn day is geometric from the first active day; from it on the customer
  never visits nor buys again. Over the ``ramp`` days (7-21) before the churn day, visit rate
  and conversion decline linearly down to 15 %, so behaviour before churn announces it;
* preferred categories (1-3, Dirichlet-like weights): 80 % of fresh product picks fall in them,
  the others follow category popularity;
* weights over the three price tiers (gamma-distributed plus one favourite tier: the favourite
  gets ~60 % of the weight on average). Browsers have both tastes too.

Devices: every customer has a primary device (an ``anonymous_id``), 30 % a second one, and ~2 %
of devices are shared by two customers. A session on a device whose last logged-in user is someone
else (or nobody) contains a ``login`` event with both ids, at the session start or after a little
anonymous browsing; 4 % of sessions end with a ``logout``.

Sessions and seasonality
------------------------
Sessions per day are Poisson with mean ``visit_rate`` x day-of-week factor (weekends ~20 %
busier) x a mild yearly curve (only if ``days > 60``, peaking in December) x the pre-churn
decline. A session starts at an hour drawn from an evening-heavy hour-of-day curve (UTC) and is
a funnel: ``page_view`` -> (``search``) -> ``product_view`` ... -> ``add_to_cart`` (sometimes
``remove_from_cart``) -> ``checkout_start`` -> ``purchase``, with seconds-to-minutes between
events and drop-off at every stage (abandoned carts and checkouts are the natural drop-offs).
Whether a session converts is one Bernoulli(``conversion``) draw, so purchases per day are
Poisson(``visit_rate`` x ``conversion`` x factors): that is what ``purchase_propensity`` uses.
Purchases carry ``order_id``, ``total`` (sum of price x quantity), ``currency`` ``"EUR"`` and
``items``; 3 % get a ``refund`` (same ``order_id``, ``total`` = refunded amount) 1-30 days later.

Catalogue and product choice
----------------------------
The catalogue has 12 categories and 3000 products with Zipf-skewed popularity within each
category, log-normal category popularity and log-normal prices around a per-category median.
Its latent structure, which decides *which* products a person views and buys:

* **price tiers**: a product's tier (0, 1, 2) is its price tercile within its category;
* **fashion**: a product's popularity on a day is its Zipf base x a fashion multiplier. 12 % of
  products are *launched* during the run (or up to 60 days before it): not sold before their
  launch day, then rising smoothly over 3-14 days to a peak as popular as a top-40 product of
  their category, fading exponentially over 10-45 days to 0.2-1x their base. Another 18 % are
  existing products with the same kind of bump (in and out of fashion). The rest are steady.
* **collections**: each (category, tier) group is cut into collections of 6-10 products that
  are viewed together;
* **complements**: each product has 1-2 complements in fixed complementary categories
  (:data:`COMPLEMENTS`, e.g. shoes -> apparel, sports), mostly of the same tier, chosen by
  popularity.

In a session, the first product is a *fresh pick by taste*: a category (80 % preferred), a price
tier by the person's tier weights, then a product of that category and tier by popularity x
fashion on that day. After each product view, the next one is with probability 0.45 another
product of the same collection (by popularity x fashion), 0.1 a complement of it, else a fresh
pick. Carts take the last viewed products as before; a session with a cart then adds a
complement of its first item with probability 0.3 (an extra ``add_to_cart`` of quantity 1,
timed between the previous and the next event, and part of the checkout and purchase).

For a fixed seed, this structure changed only the products: every product choice, jump, added
complement and the time of that added event come from a separate random stream (the main
stream still draws what the product choice drew before, and a cart skips a repeated product as
before), so the population, sessions, their times, event types, funnel outcomes, orders,
refunds and the truth's earlier fields are as they were, except that: events carry other
product ids, categories and prices (and so search queries and category pages, checkout and
purchase totals, and ``revenue_in_holdout``); ~2 % more events (the complements' ``add_to_cart``,
which also count in ``events_before_holdout`` and shift the ``event_id`` numbers); a product that
a cart gets twice is one line of the purchase's ``items`` with the quantities summed.

Volume: about **1.5 good events per simulated person-day** (``customers x days``, ~6.5 events
per session) over a 30-day run, e.g. ~45k events for 1000 customers x 30 days. The population is
fixed, so the rate falls over longer runs as churn accumulates (~1.2 over 90 days, ~0.7 over a
year). One million events: customers=20000, days=33 (~10 s, ~100k events/s on 2 cores).

Holdout and truth
-----------------
All ``days`` are simulated; events with ``ts`` in the last ``holdout_days`` days are not written.
The truth file has one JSON line per customer registered before the holdout start (see
:func:`simulate_to_file` for the fields).

Scenarios
---------
Everything above is the default scenario, ``shop``. ``SimConfig.scenario`` (``nextbest simulate
--scenario``) picks another population shape, defined in :mod:`nextbest.scenarios`: ``purchases``
(a purchase-only transaction log of one acquisition cohort, buy-till-you-die), ``cohort`` (the
shop's clickstream for one acquisition cohort that mostly churns within weeks) and ``drift`` (the
shop with a base rate falling 4x over a year). Same contract, truth fields and determinism; their
default length is 270 days of history plus the holdout (:func:`scenario_days`).

Determinism: the same :class:`SimConfig` gives the same bytes. Bad lines come from a separate
random stream, so the good events depend neither on ``bad_rate`` nor on ``holdout_days`` (except
for which of them are written).

Examples
--------
>>> from schemas.events import Event, decode_event
>>> lines = list(generate(SimConfig(customers=20, days=3, seed=1)))
>>> all(isinstance(decode_event(line), Event) for line in lines)
True
>>> lines == list(generate(SimConfig(customers=20, days=3, seed=1)))
True
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import IO, Any, Final

import orjson

from schemas.events import TRANSACTION_TYPES, parse_ts

__all__ = [
    "CATEGORIES",
    "SCENARIOS",
    "SimConfig",
    "SimStats",
    "fast_format_ts",
    "generate",
    "produce_to_kafka",
    "scenario_days",
    "simulate_to_file",
]

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000

#: Product categories with their median price in EUR.
CATEGORIES: Final[dict[str, float]] = {
    "shoes": 70.0,
    "apparel": 35.0,
    "electronics": 150.0,
    "books": 15.0,
    "home": 40.0,
    "beauty": 22.0,
    "sports": 45.0,
    "toys": 25.0,
    "grocery": 8.0,
    "garden": 30.0,
    "jewelry": 90.0,
    "outdoor": 60.0,
}
_CATEGORY_NAMES: Final = tuple(CATEGORIES)
_ADJECTIVES: Final = ("red", "cheap", "best", "new", "large", "kids", "organic", "wireless", "pro")
N_PRODUCTS: Final = 3000
ZIPF_S: Final = 1.0

#: Share of simulated people who are one-time anonymous browsers.
BROWSER_SHARE: Final = 0.15
#: Segment shares among registered customers.
SEGMENTS: Final = (("loyal", 0.25), ("occasional", 0.45), ("churning", 0.30))
#: Per segment: (median visit rate per day, mean conversion per session, median churn hazard).
SEGMENT_TRAITS: Final[dict[str, tuple[float, float, float]]] = {
    "loyal": (0.7, 0.2, 0.003),
    "occasional": (0.18, 0.1, 0.012),
    "churning": (0.5, 0.12, 0.06),
}
EXISTING_SHARE: Final = 0.5
SHARED_DEVICE_SHARE: Final = 0.02
REFUND_SHARE: Final = 0.03
DECLINE_FLOOR: Final = 0.15
PROPENSITY_HORIZON_DAYS: Final = 7

#: Share of fresh product picks in the person's preferred categories (else by category
#: popularity).
PREFERRED_SHARE: Final = 0.8
#: Share of products launched during (or shortly before) the run: not sold before their launch.
FASHION_LAUNCH_SHARE: Final = 0.12
#: Share of existing products with a fashion bump (rise, peak, fade over weeks).
FASHION_TREND_SHARE: Final = 0.18
#: Sizes of the collections (products of one category and price tier viewed together).
COLLECTION_SIZE: Final = (6, 10)
#: After a product view, P(next view in the same collection) and P(next view a complement).
COLLECTION_JUMP: Final = 0.45
COMPLEMENT_JUMP: Final = 0.1
#: P(a session with a cart adds a complement of its first cart item).
COMPLEMENT_CART: Final = 0.3
#: The two categories whose products complement a category's products (first one for a
#: product with one complement).
COMPLEMENTS: Final[dict[str, tuple[str, str]]] = {
    "shoes": ("apparel", "sports"),
    "apparel": ("shoes", "jewelry"),
    "electronics": ("home", "books"),
    "books": ("toys", "home"),
    "home": ("garden", "electronics"),
    "beauty": ("jewelry", "apparel"),
    "sports": ("outdoor", "shoes"),
    "toys": ("books", "sports"),
    "grocery": ("home", "beauty"),
    "garden": ("home", "outdoor"),
    "jewelry": ("beauty", "apparel"),
    "outdoor": ("sports", "garden"),
}
#: Products in a truth row's ``oracle_products``; sessions in its ``holdout_sessions``.
ORACLE_PRODUCTS: Final = 20
HOLDOUT_SESSIONS: Final = 5

#: The scenarios (population shapes, see "Scenarios" above) with their default length: ``None``
#: keeps ``SimConfig.days``; a number is the days of history, to which the holdout is added.
SCENARIOS: Final[dict[str, int | None]] = {
    "shop": None,
    "purchases": 270,
    "cohort": 270,
    "drift": 270,
}

#: Relative traffic per UTC hour of day: quiet nights, busy evenings.
HOUR_WEIGHTS: Final = (
    0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.3, 0.55, 0.8, 0.95, 1.0, 1.05,
    1.15, 1.05, 1.0, 1.0, 1.05, 1.2, 1.45, 1.75, 2.0, 1.9, 1.4, 0.7,
)  # fmt: skip
#: Relative traffic per weekday, Monday first (mean about 1).
WEEKDAY_WEIGHTS: Final = (0.92, 0.9, 0.92, 0.95, 1.03, 1.18, 1.1)

# An event while simulating: (ts, seq, owner index, type, customer_id, anonymous_id, session_id,
# type-specific fields). ``seq`` is unique, so sorting never compares further.
_Ev = tuple[int, int, int, str, str | None, str | None, str | None, dict[str, Any] | None]


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.

    Parameters
    ----------
    customers
        Number of simulated people (browsers and registered customers).
    days
        Simulated days, each 24 h from ``start``.
    seed
        Seed of every random choice: the same config gives the same bytes.
    holdout_days
        The last ``holdout_days`` days are simulated but not written; the truth file describes them.
    bad_rate
        Share of output lines that are malformed (rejected by ``decode_event``).
    start
        Event-time start, RFC 3339 with a zone.
    scenario
        The population's shape, one of :data:`SCENARIOS`: ``shop`` (the default, described
        above), ``purchases``, ``cohort`` or ``drift`` (see :mod:`nextbest.scenarios`).
    """

    customers: int = 1000
    days: int = 30
    seed: int = 42
    holdout_days: int = 0
    bad_rate: float = 0.0
    start: str = "2026-01-01T00:00:00Z"
    scenario: str = "shop"

    def __post_init__(self) -> None:
        if self.customers < 0:
            raise ValueError("customers must be >= 0")
        if self.days < 1:
            raise ValueError("days must be >= 1")
        if not 0 <= self.holdout_days < self.days:
            raise ValueError("holdout_days must be in [0, days)")
        if not 0.0 <= self.bad_rate < 1.0:
            raise ValueError("bad_rate must be in [0, 1)")
        if parse_ts(self.start) is None:
            raise ValueError(f"start is not an RFC 3339 timestamp with a zone: {self.start!r}")
        if self.scenario not in SCENARIOS:
            known = ", ".join(SCENARIOS)
            raise ValueError(f"unknown scenario {self.scenario!r} (known: {known})")

    @property
    def start_ms(self) -> int:
        """The start as epoch milliseconds."""
        ms = parse_ts(self.start)
        assert ms is not None
        return ms

    @property
    def holdout_start_ms(self) -> int:
        """First millisecond of the holdout (= the end of the written output)."""
        return self.start_ms + (self.days - self.holdout_days) * DAY_MS

    @property
    def end_ms(self) -> int:
        """End of the simulated period (exclusive)."""
        return self.start_ms + self.days * DAY_MS


def scenario_days(scenario: str, holdout_days: int, days: int | None = None) -> int:
    """The simulated days of a run: ``days`` if given, else the scenario's default length.

    >>> scenario_days("shop", 7), scenario_days("purchases", 90), scenario_days("cohort", 7, 40)
    (30, 360, 40)
    """
    if days is not None:
        return days
    history = SCENARIOS.get(scenario)
    return SimConfig.days if history is None else history + holdout_days


@dataclass
class SimStats:
    """Counts of one simulation run.

    Attributes
    ----------
    events
        Good events written.
    bad
        Malformed lines written.
    customers
        Customers registered before the holdout start (= truth rows).
    by_type
        Good events written, per type.
    seconds
        Wall-clock seconds of the run.
    """

    events: int = 0
    bad: int = 0
    customers: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def lines(self) -> int:
        """All lines written (good and bad)."""
        return self.events + self.bad

    @property
    def events_per_second(self) -> float:
        """Written lines per wall-clock second."""
        return self.lines / self.seconds if self.seconds > 0 else 0.0


_DAY_PREFIX: dict[int, str] = {}


def fast_format_ts(ms: int) -> str:
    """RFC 3339 UTC string, byte-identical to ``schemas.events.format_ts`` but faster.

    >>> fast_format_ts(1767323045250)
    '2026-01-02T03:04:05.250Z'
    >>> fast_format_ts(1767323045000)
    '2026-01-02T03:04:05Z'
    """
    day, rem = divmod(ms, DAY_MS)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        prefix = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")
        _DAY_PREFIX[day] = prefix
    sec, milli = divmod(rem, 1000)
    hour, sec = divmod(sec, 3600)
    minute, sec = divmod(sec, 60)
    if milli:
        return f"{prefix}{hour:02d}:{minute:02d}:{sec:02d}.{milli:03d}Z"
    return f"{prefix}{hour:02d}:{minute:02d}:{sec:02d}Z"


def yearly_factor(ms: int) -> float:
    """Mild yearly seasonality: +15 % around mid December, -15 % around mid June.

    >>> round(yearly_factor(1765800000000), 2)   # 2025-12-15
    1.15
    """
    doy = datetime.fromtimestamp(ms / 1000, tz=UTC).timetuple().tm_yday
    return 1.0 + 0.15 * math.cos(2.0 * math.pi * (doy - 349) / 365.25)


def decline(day: int, churn_day: int, ramp: int) -> float:
    """Activity multiplier on ``day``: 1, then linear down to 15 % over ``ramp`` days, then 0.

    >>> [round(decline(d, 10, 4), 2) for d in (0, 6, 7, 8, 9, 10)]
    [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if day >= churn_day:
        return 0.0
    left = churn_day - day
    if left >= ramp:
        return 1.0
    return max(DECLINE_FLOOR, left / ramp)


class _Catalogue:
    """Products grouped by category, for fast weighted sampling, and their latent structure.

    Categories get log-normal popularity; within a category, products follow a Zipf law over
    their popularity rank. Prices are log-normal around the category's median. All of this is
    drawn from the simulation's main random stream (as before the latent structure existed);
    :meth:`add_structure` adds, from a separate stream, the price tiers, the fashion curves,
    the collections and the complements (see the module's "Catalogue").
    """

    def __init__(self, rng: random.Random) -> None:
        n_cat = len(_CATEGORY_NAMES)
        ids = list(range(N_PRODUCTS))
        rng.shuffle(ids)
        self.by_cat: list[list[tuple[str, str, float]]] = [[] for _ in _CATEGORY_NAMES]
        self.cum: list[list[float]] = [[] for _ in _CATEGORY_NAMES]
        #: Every product by index: (id, category, price); its category index and Zipf base.
        self.items: list[tuple[str, str, float]] = []
        self.cat_of: list[int] = []
        self.base: list[float] = []
        for n, pid in enumerate(ids):
            ci = n % n_cat
            cat = _CATEGORY_NAMES[ci]
            price = max(0.5, round(CATEGORIES[cat] * rng.lognormvariate(0.0, 0.55), 2))
            rank = len(self.by_cat[ci])
            item = (f"p-{pid:05d}", cat, price)
            self.by_cat[ci].append(item)
            prev = self.cum[ci][-1] if self.cum[ci] else 0.0
            self.cum[ci].append(prev + 1.0 / (rank + 1) ** ZIPF_S)
            self.items.append(item)
            self.cat_of.append(ci)
            self.base.append(1.0 / (rank + 1) ** ZIPF_S)
        self.cat_cum = list(accumulate(rng.lognormvariate(0.0, 0.5) for _ in _CATEGORY_NAMES))
        total = self.cat_cum[-1]
        #: Share of each category in the category popularity.
        self.cat_share = [
            (c - (self.cat_cum[i - 1] if i else 0.0)) / total for i, c in enumerate(self.cat_cum)
        ]
        self.tier: list[int] = []
        self.groups: list[list[int]] = []
        self.collection: list[list[int]] = []
        self.complements: list[list[int]] = []
        self._fashion: list[tuple[int, float, float, float, float, float, float]] = []
        self._days: dict[int, tuple[list[float], list[list[float]]]] = {}
        self._last_day = -(1 << 30)
        self._last: tuple[list[float], list[list[float]]] = ([], [])

    def product(self, ci: int, u: float) -> tuple[str, str, float]:
        """The product of category ``ci`` at quantile ``u`` of its popularity."""
        c = self.cum[ci]
        return self.by_cat[ci][min(bisect_right(c, u * c[-1]), len(c) - 1)]

    def category(self, u: float) -> int:
        """The category at quantile ``u`` of category popularity."""
        return min(bisect_right(self.cat_cum, u * self.cat_cum[-1]), len(self.cat_cum) - 1)

    # -- latent structure -----------------------------------------------------------------------

    def add_structure(self, rng: random.Random, days: int) -> None:
        """Draw the tiers, fashion curves, collections and complements from ``rng``."""
        n = len(self.items)
        self.tier = [0] * n
        for ci in range(len(_CATEGORY_NAMES)):
            members = [i for i in range(n) if self.cat_of[i] == ci]
            members.sort(key=lambda i: (self.items[i][2], i))
            for k, i in enumerate(members):
                self.tier[i] = k * 3 // len(members)
        self.groups = [[] for _ in range(3 * len(_CATEGORY_NAMES))]
        for i in range(n):
            self.groups[3 * self.cat_of[i] + self.tier[i]].append(i)
        # Fashion: (index, launch day, rise days, fade days, level before, level after, peak).
        for i in range(n):
            u = rng.random()
            if u >= FASHION_LAUNCH_SHARE + FASHION_TREND_SHARE:
                continue
            launch = rng.uniform(-60.0, float(days))
            rise = rng.uniform(3.0, 14.0)
            fade = rng.uniform(10.0, 45.0)
            before = 0.0 if u < FASHION_LAUNCH_SHARE else 1.0
            after = rng.uniform(0.2, 1.0)
            peak_rank = math.exp(rng.uniform(0.0, math.log(40.0))) - 1.0
            peak = 1.0 / (peak_rank + 1.0) ** ZIPF_S
            self._fashion.append((i, launch, rise, fade, before, after, peak))
        # Collections: each (category, tier) group cut into groups of 6-10 products.
        self.collection = [[] for _ in range(n)]
        for group in self.groups:
            members = list(group)
            rng.shuffle(members)
            while members:
                size = rng.randint(COLLECTION_SIZE[0], COLLECTION_SIZE[1])
                if len(members) - size < COLLECTION_SIZE[0]:
                    size = len(members)
                chunk, members = members[:size], members[size:]
                for i in chunk:
                    self.collection[i] = chunk
        # Complements: 1-2 per product, in the complementary categories, mostly the same tier,
        # by (static) popularity.
        base_cum = [list(accumulate(self.base[i] for i in g)) for g in self.groups]
        self.complements = [[] for _ in range(n)]
        for i in range(n):
            cats = COMPLEMENTS[_CATEGORY_NAMES[self.cat_of[i]]]
            for k in range(1 if rng.random() < 0.5 else 2):
                cj = _CATEGORY_NAMES.index(cats[k])
                tj = self.tier[i] if rng.random() < 0.7 else rng.randrange(3)
                g = 3 * cj + tj
                c = base_cum[g]
                j = self.groups[g][min(bisect_right(c, rng.random() * c[-1]), len(c) - 1)]
                if j not in self.complements[i]:
                    self.complements[i].append(j)

    def fashion(self, i: int, day: float) -> float:
        """The fashion multiplier of product ``i`` on (fractional) ``day``: popularity = Zipf base
        x this."""
        return self.weights(int(day))[0][i] / self.base[i]

    def weights(self, day: int) -> tuple[list[float], list[list[float]]]:
        """Popularity of every product on ``day`` (Zipf base x fashion at mid-day), and the
        cumulative weights of each (category, tier) group; computed once per day."""
        if day == self._last_day:
            return self._last
        cached = self._days.get(day)
        if cached is not None:
            self._last_day, self._last = day, cached
            return cached
        w = list(self.base)
        x0 = day + 0.5
        for i, launch, rise, fade, before, after, peak in self._fashion:
            x = x0 - launch
            if x <= 0.0:
                w[i] = self.base[i] * before
                continue
            if x < rise:
                s = x / rise
                s = s * s * (3.0 - 2.0 * s)
                bump = s
            else:
                s = 1.0
                bump = math.exp(-(x - rise) / fade)
            w[i] = self.base[i] * (before + (after - before) * s) + peak * bump
        cums = [list(accumulate(w[i] for i in g)) for g in self.groups]
        if len(self._days) >= 8:
            self._days.clear()
        self._days[day] = self._last = (w, cums)
        self._last_day = day
        return w, cums

    def pick_in_collection(self, i: int, day: int, u: float) -> int:
        """Another product of ``i``'s collection, at quantile ``u`` of popularity on ``day``
        (-1 if none is sold that day)."""
        w = self.weights(day)[0]
        members = self.collection[i]
        total = -w[i]
        for j in members:
            total += w[j]
        if total <= 0.0:
            return -1
        x = u * total
        last = -1
        for j in members:
            if j != i and w[j] > 0.0:
                last = j
                x -= w[j]
                if x < 0.0:
                    return j
        return last


class _Person:
    """One simulated person and their latent traits."""

    __slots__ = (
        "active_h",
        "bought_h",
        "churn_day",
        "cid",
        "conversion",
        "devices",
        "first_day",
        "hazard",
        "idx",
        "last_day",
        "n_pre",
        "pref_cats",
        "pref_cum",
        "purchases_h",
        "ramp",
        "rate",
        "revenue_h",
        "segment",
        "sessions_h",
        "signup_day",
        "tier_cum",
        "tiers",
    )

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.cid: str | None = None
        self.segment = "browser"
        self.rate = 0.0
        self.conversion = 0.0
        self.hazard = 0.0
        self.churn_day = 1 << 30
        self.ramp = 14
        self.signup_day: int | None = None
        self.first_day = 0
        self.last_day = 1 << 30
        self.devices: list[str] = []
        self.pref_cats: list[int] = []
        self.pref_cum: list[float] = []
        self.purchases_h = 0
        self.revenue_h = 0.0
        self.active_h = False
        self.n_pre = 0
        self.tiers: list[float] = [1 / 3, 1 / 3, 1 / 3]
        self.tier_cum: list[float] = [1 / 3, 2 / 3, 1.0]
        self.bought_h: list[str] = []
        self.sessions_h: dict[str, list[str]] = {}


class _Sim:
    """The simulation state; :meth:`events` yields the events day by day, in ts order.

    This is the ``shop`` scenario; the others (:mod:`nextbest.scenarios`) are subclasses that
    change the population's parameters below, the day factor or the whole process.
    """

    #: Segment shares among registered customers and their traits (see :data:`SEGMENT_TRAITS`).
    segments: Sequence[tuple[str, float]] = SEGMENTS
    segment_traits: dict[str, tuple[float, float, float]] = SEGMENT_TRAITS
    #: Share of registered customers who exist before the start (the others sign up later).
    existing_share: float = EXISTING_SHARE
    #: P(a session with a cart adds a complement of its first item), see :data:`COMPLEMENT_CART`.
    complement_cart_p: float = COMPLEMENT_CART

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.start_ms = cfg.start_ms
        self.hold_ms = cfg.holdout_start_ms
        self.end_ms = cfg.end_ms
        self.cat = _Catalogue(self.rng)
        self.seq = 0
        self.n_sessions = 0
        self.n_orders = 0
        self.n_refunds = 0
        self.future: list[_Ev] = []  # heap: refunds and events spilling into a later day
        self.device_user: dict[str, int] = {}
        self._day_factors: dict[int, float] = {}
        self._ranked: dict[int, list[tuple[list[int], list[float]]]] = {}
        start_hour = (self.start_ms % DAY_MS) // HOUR_MS
        rotated = [HOUR_WEIGHTS[(start_hour + h) % 24] for h in range(24)]
        self.hour_cum = list(accumulate(rotated))
        self.people = self._population()
        # The latent product structure and the product choices come from separate streams, so
        # the main one (population, sessions, times, funnels) draws exactly as before it existed.
        self.cat.add_structure(random.Random(cfg.seed * 7919 + 17), cfg.days)
        taste = random.Random(cfg.seed * 7919 + 29)
        for p in self.people:
            self._tier_taste(p, taste)
        #: The product stream: every product choice, collection or complement jump, complement
        #: added to a cart and the time of that added event.
        self.prng = random.Random(cfg.seed * 7919 + 41)
        hold_day = cfg.days - cfg.holdout_days
        #: The truth population: registered before the holdout start.
        self.registered = [
            p
            for p in self.people
            if p.cid is not None and (p.signup_day is None or p.signup_day < hold_day)
        ]

    # -- population -----------------------------------------------------------------------------

    def _device(self) -> str:
        return f"a-{self.rng.getrandbits(48):012x}"

    def _population(self) -> list[_Person]:
        rng = self.rng
        cfg = self.cfg
        people: list[_Person] = []
        seg_names = [s for s, _ in self.segments]
        seg_cum = list(accumulate(w for _, w in self.segments))
        signup_days = self.signup_days()
        for i in range(cfg.customers):
            p = _Person(i)
            p.devices.append(self._device())
            if rng.random() < BROWSER_SHARE:
                p.first_day = rng.randrange(cfg.days)
                p.last_day = p.first_day + rng.randrange(4)
            else:
                p.cid = f"c-{i:07d}"
                p.segment = seg_names[bisect_right(seg_cum, rng.random() * seg_cum[-1])]
                rate, conv, hazard = self.segment_traits[p.segment]
                p.rate = rate * rng.lognormvariate(0.0, 0.5)
                k = 12.0
                p.conversion = min(0.9, rng.betavariate(conv * k, (1.0 - conv) * k))
                p.hazard = min(0.5, hazard * rng.lognormvariate(0.0, 0.4))
                p.ramp = rng.randint(7, 21)
                if rng.random() < self.existing_share:
                    p.signup_day = None
                    p.first_day = 0
                    active_from = 0
                else:
                    p.signup_day = rng.randrange(signup_days)
                    p.first_day = max(0, p.signup_day - rng.randrange(7))
                    active_from = p.signup_day + 1
                u = rng.random()
                p.churn_day = active_from + int(math.log1p(-u) / math.log1p(-p.hazard))
                if rng.random() < 0.3:
                    p.devices.append(self._device())
            self._preferences(p)
            people.append(p)
        # Shared devices: ~2 % of devices are also used by a second registered customer.
        reg = [p for p in people if p.cid is not None]
        n_dev = sum(len(p.devices) for p in reg)
        if len(reg) >= 2:
            for _ in range(max(1, round(SHARED_DEVICE_SHARE * n_dev))):
                a, b = rng.sample(reg, 2)
                b.devices.append(a.devices[0])
        return people

    def signup_days(self) -> int:
        """New customers sign up on a day drawn uniformly from ``[0, signup_days())``."""
        return self.cfg.days

    def _preferences(self, p: _Person) -> None:
        """Draw the person's 1-3 preferred categories and their weights."""
        rng = self.rng
        n_pref = rng.choice((1, 2, 2, 3))
        for _ in range(8 * n_pref):  # distinct, drawn by category popularity
            ci = self.cat.category(rng.random())
            if ci not in p.pref_cats:
                p.pref_cats.append(ci)
                if len(p.pref_cats) == n_pref:
                    break
        p.pref_cum = list(accumulate(rng.random() + 0.2 for _ in p.pref_cats))

    @staticmethod
    def _tier_taste(p: _Person, rng: random.Random) -> None:
        """Draw the person's weights over the price tiers: one favourite tier gets most."""
        favourite = rng.randrange(3)
        w = [rng.gammavariate(0.5, 1.0) + (1.0 if t == favourite else 0.0) for t in range(3)]
        total = sum(w)
        p.tiers = [x / total for x in w]
        p.tier_cum = list(accumulate(p.tiers))

    def category_taste(self, p: _Person) -> list[float]:
        """P(category) of a fresh product pick by ``p``, per category index."""
        cat = self.cat
        out = [(1.0 - PREFERRED_SHARE) * s for s in cat.cat_share]
        prev = 0.0
        for ci, c in zip(p.pref_cats, p.pref_cum, strict=True):
            out[ci] += PREFERRED_SHARE * (c - prev) / p.pref_cum[-1]
            prev = c
        return out

    # -- truth ----------------------------------------------------------------------------------

    def day_factor(self, day: int) -> float:
        """Traffic multiplier of a day: weekday and, for runs over 60 days, the season."""
        f = self._day_factors.get(day)
        if f is None:
            f = self._day_factors[day] = self._compute_day_factor(day)
        return f

    def _compute_day_factor(self, day: int) -> float:
        ms = self.start_ms + day * DAY_MS + DAY_MS // 2
        f = WEEKDAY_WEIGHTS[datetime.fromtimestamp(ms / 1000, tz=UTC).weekday()]
        if self.cfg.days > 60:
            f *= yearly_factor(ms)
        return f

    def expected_purchases(self, p: _Person, days: range) -> float:
        """The latent mean number of purchases of ``p`` over ``days`` (Poisson per day)."""
        mean = 0.0
        for d in days:
            m = decline(d, p.churn_day, p.ramp)
            mean += p.rate * self.day_factor(d) * m * p.conversion * m
        return mean

    def purchase_propensity(self, p: _Person) -> float:
        """P(>= 1 purchase in the 7 days from the holdout start | latent state)."""
        h0 = self.cfg.days - self.cfg.holdout_days
        return 1.0 - math.exp(-self.expected_purchases(p, range(h0, h0 + PROPENSITY_HORIZON_DAYS)))

    def churn_probability(self, p: _Person) -> float:
        """P(no purchase in the holdout | latent state): the Bayes-optimal churn score."""
        h0 = self.cfg.days - self.cfg.holdout_days
        return math.exp(-self.expected_purchases(p, range(h0, self.cfg.days)))

    def truth_row(self, p: _Person) -> dict[str, Any]:
        """The truth of one registered customer (fields: see :func:`simulate_to_file`)."""
        churned = p.churn_day < self.cfg.days
        return {
            "customer_id": p.cid,
            "segment": p.segment,
            "churn_hazard": round(p.hazard, 6),
            "purchase_propensity": round(self.purchase_propensity(p), 6),
            "churn_probability": round(self.churn_probability(p), 6),
            "churned": churned,
            "churn_day": p.churn_day if churned else None,
            "purchases_in_holdout": p.purchases_h,
            "revenue_in_holdout": round(p.revenue_h, 2),
            "active_in_holdout": p.active_h,
            "events_before_holdout": p.n_pre,
            "visit_rate": round(p.rate, 6),
            "session_conversion": round(p.conversion, 6),
            "signup_day": p.signup_day,
            "preferred_categories": [_CATEGORY_NAMES[c] for c in p.pref_cats],
            "taste": self.taste(p),
            "oracle_products": self.oracle_products(p),
            "products_in_holdout": list(p.bought_h),
            "holdout_sessions": [v for v in p.sessions_h.values() if len(v) >= 2][
                :HOLDOUT_SESSIONS
            ],
        }

    def taste(self, p: _Person) -> dict[str, Any]:
        """The person's latent taste: P(category) and P(price tier) of a fresh product pick."""
        cats = sorted(
            ((w, _CATEGORY_NAMES[ci]) for ci, w in enumerate(self.category_taste(p))),
            key=lambda x: -x[0],
        )
        return {
            "categories": {name: round(w, 6) for w, name in cats},
            "price_tiers": [round(w, 6) for w in p.tiers],
        }

    def oracle_products(self, p: _Person, n: int = ORACLE_PRODUCTS) -> list[str]:
        """The ``n`` products that ``p`` most likely picks fresh at the holdout start: P(category)
        x P(tier) x the product's share of its (category, tier) popularity x fashion that day."""
        day = self.cfg.days - self.cfg.holdout_days
        cat = self.cat
        ranked = self._ranked_groups(day)
        cat_p = self.category_taste(p)
        heap: list[tuple[float, int, int]] = []
        for g, (_, shares) in enumerate(ranked):
            scale = cat_p[g // 3] * p.tiers[g % 3]
            if scale > 0.0 and shares:
                heap.append((-scale * shares[0], g, 0))
        heapq.heapify(heap)
        out: list[str] = []
        while heap and len(out) < n:
            _, g, k = heapq.heappop(heap)
            members, shares = ranked[g]
            out.append(cat.items[members[k]][0])
            if k + 1 < len(members):
                scale = cat_p[g // 3] * p.tiers[g % 3]
                heapq.heappush(heap, (-scale * shares[k + 1], g, k + 1))
        return out

    def _ranked_groups(self, day: int) -> list[tuple[list[int], list[float]]]:
        """Per (category, tier) group: its products by popularity on ``day``, most popular
        first, and their shares of the group's popularity (cached per day)."""
        cached = self._ranked.get(day)
        if cached is None:
            w, cums = self.cat.weights(day)
            cached = []
            for g, members in enumerate(self.cat.groups):
                total = cums[g][-1]
                order = sorted(members, key=lambda i: (-w[i], i))
                cached.append((order, [w[i] / total for i in order]))
            self._ranked = {day: cached}
        return cached

    def truth_rows(self) -> Iterator[bytes]:
        for p in self.registered:
            yield orjson.dumps(self.truth_row(p))

    # -- sessions -------------------------------------------------------------------------------

    def _pick_product(self, p: _Person, day: int, prev: int = -1) -> tuple[str, int]:
        """Pick the product ``p`` views on ``day`` after viewing product ``prev`` (-1: none).

        Returns ``(shadow, index)``. ``index`` is the product picked (an index into the
        catalogue's ``items``), drawn from the product stream (``self.prng``). ``shadow`` is
        the id the simulator picked before the latent structure existed, from the same three
        draws of the main stream: it still steers the decisions that draw from the main stream
        (a cart skips a product already in it), so they stay as they were for a seed.
        """
        r = self.rng.random
        cat = self.cat
        if r() < PREFERRED_SHARE:
            ci = p.pref_cats[bisect_right(p.pref_cum, r() * p.pref_cum[-1])]
        else:
            ci = cat.category(r())
        c = cat.cum[ci]
        shadow = cat.by_cat[ci][min(bisect_right(c, r() * c[-1]), len(c) - 1)][0]
        # The product stream: after a view of ``prev``, another product of its collection or
        # one of its complements; else a fresh pick by taste: category, then price tier, then
        # popularity x fashion on ``day`` within that category and tier.
        q = self.prng.random
        if prev >= 0:
            u = q()
            if u < COLLECTION_JUMP:
                j = cat.pick_in_collection(prev, day, q())
                if j >= 0:
                    return shadow, j
            elif u < COLLECTION_JUMP + COMPLEMENT_JUMP:
                comps = cat.complements[prev]
                j = comps[int(q() * len(comps))]
                if cat.weights(day)[0][j] > 0.0:  # not before its launch
                    return shadow, j
        if q() < PREFERRED_SHARE:
            ci = p.pref_cats[bisect_right(p.pref_cum, q() * p.pref_cum[-1])]
        else:
            ci = cat.category(q())
        tier = p.tier_cum
        g = 3 * ci + min(bisect_right(tier, q() * tier[-1]), 2)
        c = cat.weights(day)[1][g]
        return shadow, cat.groups[g][min(bisect_right(c, q() * c[-1]), len(c) - 1)]

    def _complement(self, first: int, day: int, cart: list[tuple[str, str, float, int]]) -> int:
        """The complement of the cart's first product ``first`` that the session adds on
        ``day`` (product stream), or -1."""
        q = self.prng.random
        if q() >= self.complement_cart_p:
            return -1
        comps = self.cat.complements[first]
        j = comps[int(q() * len(comps))]
        if self.cat.weights(day)[0][j] <= 0.0:  # not before its launch
            return -1
        pid = self.cat.items[j][0]
        return -1 if any(c[0] == pid for c in cart) else j

    def _session(
        self, p: _Person, day: int, out: list[_Ev], kind: str, start: int | None = None
    ) -> None:
        """Append one session's events. ``kind``: ``anon``, ``signup`` or ``member``; ``start``:
        the session's first time (default: an hour of ``day`` drawn by the hourly traffic)."""
        rng = self.rng
        r = rng.random
        expo = rng.expovariate
        self.n_sessions += 1
        sid = f"s-{self.cfg.seed}-{self.n_sessions}"
        if start is None:
            hour = bisect_right(self.hour_cum, r() * self.hour_cum[-1])
            t = self.start_ms + day * DAY_MS + min(hour, 23) * HOUR_MS + int(r() * HOUR_MS)
        else:
            t = start
        owner = p.idx
        cid = p.cid if kind == "member" else None
        seq = self.seq
        m = decline(day, p.churn_day, p.ramp) if kind == "member" else 1.0

        device = p.devices[0]
        if kind == "member" and len(p.devices) > 1 and r() < 0.3:
            device = p.devices[1 + int(r() * (len(p.devices) - 1))]
        login_at = -1  # index of the browsing step before which the login/signup happens
        link_type = "login"
        if kind == "member" and self.device_user.get(device) != owner:
            cid = None
            login_at = 0 if r() < 0.6 else 1 + int(r() * 3)
        elif kind == "signup":
            login_at = 1 + int(r() * 3)
            link_type = "signup"
        keep_aid = kind != "member" or r() < 0.7
        aid: str | None = device
        items = self.cat.items
        # A complement added to the cart, waiting for the next event: it goes between the two,
        # so the times of the session's other events stay as they were.
        pending: list[tuple[int, int, str | None, str | None, dict[str, Any]]] = []

        def add(typ: str, extra: dict[str, Any] | None, gap_ms: float, both: bool = False) -> int:
            nonlocal t, seq
            after = t
            t += int(gap_ms) + 500
            seq += 1
            ev_aid = aid if (both or cid is None or keep_aid) else None
            out.append((t, seq, owner, typ, cid, ev_aid, sid, extra))
            if pending:
                c_seq, _, c_cid, c_aid, c_extra = pending.pop()
                c_ts = after + 250 + int(self.prng.random() * (t - after - 500))
                out.append((c_ts, c_seq, owner, "add_to_cart", c_cid, c_aid, sid, c_extra))
            return t

        def link() -> None:
            nonlocal cid
            cid = p.cid
            self.device_user[device] = owner
            method = "password" if link_type == "login" else "email"
            add(link_type, {"properties": {"method": method}}, expo(1 / 15_000), True)

        # Landing.
        if login_at == 0:
            link()
        first = self._pick_product(p, day)
        page = "/" if r() < 0.5 else f"/c/{items[first[1]][1]}"
        add("page_view", {"properties": {"page": page}}, 0)
        # Browsing.
        n_views = 1 + min(int(expo(1 / 2.5)), 14)
        viewed: list[tuple[str, int]] = []  # (shadow id, product index), see _pick_product
        for step in range(n_views):
            if step == login_at and step > 0:
                link()
            picked = first if step == 0 else self._pick_product(p, day, viewed[-1][1])
            prod = items[picked[1]]
            u = r()
            if u < 0.3:
                query = f"{_ADJECTIVES[int(r() * len(_ADJECTIVES))]} {prod[1]}"
                add("search", {"properties": {"query": query}}, expo(1 / 20_000))
                source = "search"
            elif u < 0.45:
                add("page_view", {"properties": {"page": f"/c/{prod[1]}"}}, expo(1 / 15_000))
                source = "browse"
            else:
                source = "browse" if u < 0.85 else "recommendation"
            add(
                "product_view",
                {
                    "product_id": prod[0],
                    "category": prod[1],
                    "price": prod[2],
                    "properties": {"source": source},
                },
                expo(1 / 35_000),
            )
            viewed.append(picked)
        if login_at >= n_views:
            link()

        # Funnel outcome.
        if kind == "anon":
            converts = False
            cart_p, checkout_p = 0.2, 0.0
        else:
            converts = r() < p.conversion * m
            cart_p, checkout_p = 0.3, 0.3
        if converts or r() < cart_p:
            n_items = 1 + (r() < 0.3) + (r() < 0.1)
            cart: list[tuple[str, str, float, int]] = []
            first_in_cart = -1
            in_cart: set[str] = set()  # shadow ids: the main stream's decisions as before
            for j in range(n_items):
                picked = viewed[-1 - j] if j < len(viewed) else self._pick_product(p, day)
                if picked[0] in in_cart:
                    continue
                in_cart.add(picked[0])
                if first_in_cart < 0:
                    first_in_cart = picked[1]
                prod = items[picked[1]]
                q = 1 if r() < 0.8 else (2 if r() < 0.75 else 3)
                add(
                    "add_to_cart",
                    {"product_id": prod[0], "category": prod[1], "price": prod[2], "quantity": q},
                    expo(1 / 20_000),
                )
                cart.append((prod[0], prod[1], prod[2], q))
            if len(cart) > 1 and r() < 0.2:
                gone = cart.pop()
                add(
                    "remove_from_cart",
                    {
                        "product_id": gone[0],
                        "category": gone[1],
                        "price": gone[2],
                        "quantity": gone[3],
                    },
                    expo(1 / 30_000),
                )
            n_drawn = len(cart)
            extra_j = self._complement(first_in_cart, day, cart)
            if extra_j >= 0:
                prod = items[extra_j]
                seq += 1
                extra = {
                    "product_id": prod[0],
                    "category": prod[1],
                    "price": prod[2],
                    "quantity": 1,
                }
                pending.append((seq, t, cid, aid if (cid is None or keep_aid) else None, extra))
                cart.append((prod[0], prod[1], prod[2], 1))
            if converts or r() < checkout_p:
                total = round(sum(pr * q for _, _, pr, q in cart), 2)
                add("checkout_start", {"total": total, "currency": "EUR"}, expo(1 / 30_000))
                if converts:
                    self._purchase(p, cart, total, add, n_drawn)
        if kind == "member" and r() < 0.04:
            add("logout", None, expo(1 / 60_000))
            self.device_user.pop(device, None)
        if pending:
            c_seq, after, c_cid, c_aid, c_extra = pending.pop()
            c_ts = after + 500 + int(self.prng.expovariate(1 / 20_000))
            out.append((c_ts, c_seq, owner, "add_to_cart", c_cid, c_aid, sid, c_extra))
        self.seq = seq

    def _purchase(
        self,
        p: _Person,
        cart: list[tuple[str, str, float, int]],
        total: float,
        add: Callable[[str, dict[str, Any] | None, float], int],
        n_drawn: int | None = None,
    ) -> None:
        """Add the purchase of ``cart`` (and maybe queue its refund). ``n_drawn``: the cart's
        first lines that the main stream drew (the others are complements, drawn apart); a
        one-line refund returns one of those."""
        rng = self.rng
        self.n_orders += 1
        order_id = f"o-{self.cfg.seed}-{self.n_orders}"
        purchase_ts = add(
            "purchase",
            {"order_id": order_id, "total": total, "currency": "EUR", "items": _items(cart)},
            rng.expovariate(1 / 40_000),
        )
        if rng.random() < REFUND_SHARE:
            delay = int(rng.uniform(1.0, 30.0) * DAY_MS)
            drawn = cart if n_drawn is None else cart[:n_drawn]
            back = cart if (len(drawn) == 1 or rng.random() < 0.6) else [rng.choice(drawn)]
            amount = round(sum(pr * q for _, _, pr, q in back), 2)
            refunded = _items(back)
            self.n_refunds += 1  # refunds get negative seqs: unique, apart from the sessions'
            ev: _Ev = (
                purchase_ts + delay,
                -self.n_refunds,
                p.idx,
                "refund",
                p.cid,
                None,
                None,
                {"order_id": order_id, "total": amount, "currency": "EUR", "items": refunded},
            )
            heapq.heappush(self.future, ev)

    # -- the run --------------------------------------------------------------------------------

    def day_events(self, day: int) -> list[_Ev]:
        """Simulate one day; return its events (ts in this day) sorted by ts."""
        rng = self.rng
        r = rng.random
        day_end = self.start_ms + (day + 1) * DAY_MS
        fac = self.day_factor(day)
        out: list[_Ev] = []
        for p in self.people:
            if day < p.first_day or day > p.last_day or day >= p.churn_day:
                continue
            if p.cid is None:  # browser: one session on the first day, then maybe one or two more
                if day == p.first_day or r() < 0.35:
                    self._session(p, day, out, "anon")
                continue
            if p.signup_day is not None and day <= p.signup_day:
                if day == p.signup_day:
                    self._session(p, day, out, "signup")
                elif day == p.first_day or r() < 0.3:
                    self._session(p, day, out, "anon")
                continue
            lam = p.rate * fac * decline(day, p.churn_day, p.ramp)
            # Poisson(lam) by multiplication (lam is small).
            limit = math.exp(-lam)
            prod = r()
            while prod > limit:
                self._session(p, day, out, "member")
                prod *= r()
        future = self.future
        today: list[_Ev] = []
        for ev in out:
            if ev[0] < day_end:
                today.append(ev)
            else:
                heapq.heappush(future, ev)
        while future and future[0][0] < day_end:
            today.append(heapq.heappop(future))
        today.sort()
        return today

    def events(self, last_day: int, holdout_truth: bool) -> Iterator[_Ev]:
        """All events of days ``[0, last_day)`` in ts order, holdout accounting on the way."""
        hold_ms, end_ms = self.hold_ms, self.end_ms
        people = self.people
        # Sessions seen shortly before the holdout: their holdout part is not a whole session.
        open_before: set[str] = set()
        for day in range(last_day):
            for ev in self.day_events(day):
                ts = ev[0]
                if ts >= end_ms:
                    return
                if ts < hold_ms:
                    if ev[4] is not None:
                        people[ev[2]].n_pre += 1
                    if ev[6] is not None and ts >= hold_ms - 4 * HOUR_MS:
                        open_before.add(ev[6])
                elif holdout_truth:
                    typ = ev[3]
                    p = people[ev[2]]
                    if p.cid is not None and typ != "refund":
                        p.active_h = True
                        extra = ev[7]
                        if typ == "purchase":
                            assert extra is not None
                            p.purchases_h += 1
                            p.revenue_h += extra["total"]
                            for item in extra["items"]:
                                if item["product_id"] not in p.bought_h:
                                    p.bought_h.append(item["product_id"])
                        elif typ == "product_view" and ev[6] not in open_before:
                            assert extra is not None and ev[6] is not None
                            p.sessions_h.setdefault(ev[6], []).append(extra["product_id"])
                yield ev


def _items(cart: Sequence[tuple[str, str, float, int]]) -> list[dict[str, Any]]:
    """The ``items`` of a purchase or refund: one per product (quantities of a product added
    twice summed), in the cart's order.

    >>> [(i["product_id"], i["quantity"]) for i in _items([("a", "x", 1.0, 1), ("b", "x", 2.0, 1),
    ...                                                     ("a", "x", 1.0, 2)])]
    [('a', 3), ('b', 1)]
    """
    merged: dict[str, dict[str, Any]] = {}
    for pid, cat, price, q in cart:
        item = merged.get(pid)
        if item is None:
            merged[pid] = {"product_id": pid, "category": cat, "price": price, "quantity": q}
        else:
            item["quantity"] += q
    return list(merged.values())


def _new_sim(cfg: SimConfig) -> _Sim:
    """The simulation of ``cfg``'s scenario."""
    if cfg.scenario == "shop":
        return _Sim(cfg)
    from nextbest.scenarios import scenario_sim  # here: nextbest.scenarios imports this module

    return scenario_sim(cfg)


# -- output ---------------------------------------------------------------------------------------

_BAD_KINDS: Final = (
    "truncated",
    "missing_event_id",
    "missing_type",
    "unknown_type",
    "bad_timestamp",
    "float_ts",
    "no_identity",
    "numeric_customer_id",
    "purchase_without_customer",
    "oversized",
    "not_an_object",
)


def _bad_line(rng: random.Random, d: dict[str, Any], line: bytes, ts: int, n: int) -> bytes:
    """A malformed line derived from a good event ``d`` (copied, not mutated)."""
    kind = _BAD_KINDS[int(rng.random() * len(_BAD_KINDS))]
    if kind == "truncated":
        return line[: max(1, int(len(line) * rng.uniform(0.2, 0.9)))]
    b = dict(d)
    b["event_id"] = f"{d['event_id']}-bad-{n}"
    if kind == "missing_event_id":
        del b["event_id"]
    elif kind == "missing_type":
        del b["type"]
    elif kind == "unknown_type":
        b["type"] = rng.choice(("teleport", "PAGE_VIEW", "pageview", "click"))
    elif kind == "bad_timestamp":
        b["ts"] = rng.choice(("yesterday", "2026-13-45T25:61:00Z", "2026-01-02T03:04:05", ""))
    elif kind == "float_ts":
        b["ts"] = ts + 0.5
    elif kind == "no_identity":
        b.pop("customer_id", None)
        b.pop("anonymous_id", None)
    elif kind == "numeric_customer_id":
        b["customer_id"] = int(rng.random() * 1e6)
    elif kind == "purchase_without_customer":
        b["anonymous_id"] = b.get("anonymous_id") or f"a-{rng.getrandbits(48):012x}"
        b.pop("customer_id", None)
        b["type"] = "purchase"
        b.setdefault("order_id", f"o-bad-{n}")
        b.setdefault("total", 10.0)
        b.setdefault("currency", "EUR")
    elif kind == "oversized":
        b["properties"] = {"blob": "x" * (17 * 1024)}
    else:  # not_an_object
        return rng.choice((orjson.dumps([b]), b'"page_view"', b"42", b"null"))
    return orjson.dumps(b)


def event_doc(ev: _Ev, event_id: str) -> dict[str, Any]:
    """The JSON document of a simulated event (the event contract's fields it has).

    >>> event_doc((86_400_000, 1, 0, "page_view", "c-1", None, "s-1", None), "e-1")["ts"]
    '1970-01-02T00:00:00Z'
    >>> sorted(event_doc((0, 1, 0, "login", "c-1", "a-1", None, {"x": 1}), "e-2"))
    ['anonymous_id', 'customer_id', 'event_id', 'ts', 'type', 'x']
    """
    ts, _, _, typ, cid, aid, sid, extra = ev
    d: dict[str, Any] = {"event_id": event_id, "type": typ, "ts": fast_format_ts(ts)}
    if cid is not None:
        d["customer_id"] = cid
    if aid is not None:
        d["anonymous_id"] = aid
    if sid is not None:
        d["session_id"] = sid
    if extra is not None:
        d.update(extra)
    return d


def _lines(
    cfg: SimConfig, sim: _Sim, *, truth: bool
) -> Iterator[tuple[bytes, str | None, str | None, int]]:
    """Output lines as ``(line, type or None if bad, key, ts)``, pre-holdout only."""
    seed = cfg.seed
    hold_ms = sim.hold_ms
    bad_rate = cfg.bad_rate
    bad_rng = random.Random(f"nextbest-bad-{seed}")
    br = bad_rng.random
    n = 0
    n_bad = 0
    last_day = cfg.days if truth else cfg.days - cfg.holdout_days
    dumps = orjson.dumps
    for ev in sim.events(last_day, truth):
        ts, typ, cid, aid = ev[0], ev[3], ev[4], ev[5]
        if ts >= hold_ms:
            continue
        n += 1
        d = event_doc(ev, f"e-{seed}-{n}")
        line = dumps(d)
        while bad_rate and br() < bad_rate:
            n_bad += 1
            bad = _bad_line(bad_rng, d, line, ts, n_bad)
            yield bad, None, cid or aid or "bad", ts
        # Keyed by device first: a device's anonymous events and its logins share a partition,
        # so identity links are seen in order (see README, "Producing events").
        yield line, typ, aid if aid is not None else cid, ts


def generate(cfg: SimConfig) -> Iterator[bytes]:
    """Yield the pre-holdout output lines (good events in ts order, bad lines mixed in).

    Parameters
    ----------
    cfg
        The simulation config.

    Yields
    ------
    bytes
        One JSON line each, without a trailing newline.
    """
    sim = _new_sim(cfg)
    for line, _, _, _ in _lines(cfg, sim, truth=False):
        yield line


def _write_truth(sim: _Sim, truth: Path) -> None:
    truth.parent.mkdir(parents=True, exist_ok=True)
    with truth.open("wb") as f:
        for row in sim.truth_rows():
            f.write(row)
            f.write(b"\n")


def _count(stats: SimStats, typ: str | None) -> None:
    if typ is None:
        stats.bad += 1
    else:
        stats.events += 1
        stats.by_type[typ] = stats.by_type.get(typ, 0) + 1


def simulate_to_file(cfg: SimConfig, out: Path, truth: Path | None = None) -> SimStats:
    """Write the pre-holdout events to ``out`` (JSONL) and the truth to ``truth``.

    Parameters
    ----------
    cfg
        The simulation config.
    out
        Output JSONL file: one line per event, each terminated by ``\\n``.
    truth
        Truth JSONL file or ``None`` to skip it (the holdout days are then not simulated). One
        line per customer registered before the holdout start (``signup_day`` null or earlier),
        whether or not they were active. "Holdout" is ``[holdout_start_ms, end_ms)``; with
        ``holdout_days=0`` it is empty. Fields:

        ``customer_id``
            As in the events.
        ``segment``
            ``loyal``, ``occasional`` or ``churning``.
        ``churn_hazard``
            Latent per-day probability of churning (becoming permanently inactive).
        ``purchase_propensity``
            Probability of >= 1 purchase in the 7 days from the holdout start, given the latent
            state (traits, seasonality and the latent churn day with its pre-churn decline):
            ``1 - exp(-sum_d rate * day_factor_d * conversion * decline_d ** 2)``. It is the
            Bayes-optimal score for "buys within 7 days"; it is not a per-session conversion
            (that is ``session_conversion``).
        ``churn_probability``
            Probability of no purchase in the whole holdout given the latent state (as for
            ``purchase_propensity``):
            ``exp(-sum_d rate * day_factor_d * conversion * decline_d ** 2)`` over the holdout
            days; 1 when there is no holdout. The Bayes-optimal score for "no purchase in the
            holdout", so the churn oracle when the holdout equals the churn horizon
            (``churn_hazard`` alone ignores whether a customer has already churned).
        ``churned``
            Whether the latent churn day falls before the end of the simulated period (the
            holdout end).
        ``churn_day``
            0-based day index since ``start`` from which the customer never visits again, or
            null if not churned by the end. A churn before the holdout means no holdout activity.
        ``purchases_in_holdout``, ``revenue_in_holdout``
            Count and gross EUR sum of ``purchase`` events with ts in the holdout (refunds not
            deducted).
        ``active_in_holdout``
            Any event of the customer with ts in the holdout, except a ``refund`` (which the shop
            issues late for an earlier order).
        ``events_before_holdout``
            Written events carrying this ``customer_id`` (0: never seen by the engine).
        ``visit_rate``, ``session_conversion``
            Latent sessions per day and P(purchase) per session, before seasonality and decline.
        ``signup_day``
            0-based day of the ``signup`` event, null if registered before ``start``.
        ``preferred_categories``
            Categories of 80 % of the customer's fresh product picks.
        ``taste``
            ``{"categories": {name: P}, "price_tiers": [P0, P1, P2]}``: the probabilities of
            a category (all 12, most likely first) and of a price tier in a fresh product pick.
        ``oracle_products``
            The 20 product ids the customer most likely picks fresh at the holdout start:
            P(category) x P(tier) x the product's share of its category and tier's popularity x
            fashion that day (the recommendation oracle; it ignores collections, complements
            and what the customer did).
        ``products_in_holdout``
            Distinct product ids the customer bought in the holdout, by first purchase.
        ``holdout_sessions``
            Up to 5 of the customer's sessions in the holdout (the first ones with at least two
            product views; not one that began before the holdout), each the list of product ids
            viewed, in order.

    Returns
    -------
    SimStats
        Counts of what was written.
    """
    t0 = time.perf_counter()
    stats = SimStats()
    sim = _new_sim(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        _write_lines(f, _lines(cfg, sim, truth=truth is not None), stats)
    if truth is not None:
        _write_truth(sim, truth)
    stats.customers = len(sim.registered)
    stats.seconds = time.perf_counter() - t0
    return stats


def _write_lines(
    f: IO[bytes], lines: Iterator[tuple[bytes, str | None, str | None, int]], stats: SimStats
) -> None:
    buf: list[bytes] = []
    for line, typ, _, _ in lines:
        _count(stats, typ)
        buf.append(line)
        if len(buf) >= 4096:
            buf.append(b"")
            f.write(b"\n".join(buf))
            buf.clear()
    if buf:
        buf.append(b"")
        f.write(b"\n".join(buf))


def produce_to_kafka(
    cfg: SimConfig,
    brokers: str,
    truth: Path | None = None,
    topics: Sequence[str] = ("clickstream", "transactions"),
) -> SimStats:
    """Produce the pre-holdout events to Kafka and write the truth file.

    ``purchase`` and ``refund`` go to ``topics[1]``, everything else (bad lines too) to
    ``topics[0]``. The key is the ``anonymous_id``, else the ``customer_id``; the message
    timestamp is the event time. A full producer queue (``BufferError``) is waited out with
    ``poll(0.1)`` and the message retried, never dropped.

    Parameters
    ----------
    cfg
        The simulation config.
    brokers
        Kafka ``bootstrap.servers``.
    truth
        Truth JSONL file (see :func:`simulate_to_file`), or ``None``.
    topics
        ``(clickstream topic, transactions topic)``.

    Returns
    -------
    SimStats
        Counts of what was produced.

    Raises
    ------
    RuntimeError
        If any message could not be delivered.
    """
    from confluent_kafka import KafkaError, Message, Producer

    click_topic, tx_topic = topics[0], topics[1]
    t0 = time.perf_counter()
    stats = SimStats()
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 200_000,
            "message.timeout.ms": 120_000,
        }
    )
    sim = _new_sim(cfg)
    for line, typ, key, ts in _lines(cfg, sim, truth=truth is not None):
        topic = tx_topic if typ in TRANSACTION_TYPES else click_topic
        kb = key.encode() if key is not None else None
        while True:
            try:
                if typ is None:
                    producer.produce(topic, line, kb, on_delivery=on_delivery)
                else:
                    producer.produce(topic, line, kb, on_delivery=on_delivery, timestamp=ts)
                break
            except BufferError:
                producer.poll(0.1)
        _count(stats, typ)
        if stats.lines % 10_000 == 0:
            producer.poll(0)
    while producer.flush(10.0) > 0:
        pass
    if failures:
        raise RuntimeError(f"{len(failures)} messages not delivered, first: {failures[0]}")
    if truth is not None:
        _write_truth(sim, truth)
    stats.customers = len(sim.registered)
    stats.seconds = time.perf_counter() - t0
    return stats

"""Simulator scenarios: population shapes other than the default shop.

The default scenario, ``shop`` (:mod:`nextbest.simulator`), is a steady population: half of it
exists before the start, the other half signs up evenly over the run, and traffic follows only the
week and the season. Real histories often look different, and a model that is excellent on one
shape can be wrong on another (DESIGN.md, "Known traps"). Each scenario here is a subclass of the
simulator's ``_Sim`` that draws another population. All keep the event contract, the truth
file's fields (the oracle probabilities are exact for the process simulated), determinism (same
config, same bytes) and the holdout. Choose one with ``SimConfig(scenario=...)`` or
``nextbest simulate --scenario``; their default length is 270 days of history plus the holdout.

``purchases``: a retailer's transaction log, buy-till-you-die
    Only ``purchase`` events (and 3 % ``refund`` s, 1-30 days later), each with ``customer_id``,
    ``order_id``, ``total``, ``currency`` and ``items`` as in the shop, and nothing else: no
    sessions, page views, anonymous ids, logins or signups. Every person is a customer of one
    acquisition cohort, entering the log with a first purchase drawn over the first
    :data:`ACQUISITION_DAYS` days (90, a quarter; the whole run if shorter) with the traffic's
    shape (weekday, season, hour of day). Then, the MBG/NBD process of the BTYD literature:

    * while *alive*, purchases come as a Poisson process of intensity ``rate x c(t)``; the
      latent ``rate`` (purchases per day) is Gamma(shape :data:`RATE_SHAPE`, mean
      :data:`RATE_MEAN`) over customers, so a few buy often and many rarely;
    * right after every purchase (the first one too), the customer drops out for good with a
      latent probability ``dropout`` ~ Beta(:data:`DROPOUT_A`, :data:`DROPOUT_B`) (mean 0.42);
    * ``c(t)`` = weekday factor x yearly season (runs over 60 days) x :func:`cohort_drift`
      (the survivors' purchase rate declines as the cohort ages: 1 at the start, towards
      :data:`DRIFT_FLOOR` with a time constant of :data:`DRIFT_DAYS` days) x hour-of-day
      weight, constant within each hour.

    About two thirds of customers never buy again after their first purchase within 270 days, as in
    the classic CDNOW cohort. The truth's ``churn_probability`` is exactly
    ``P(no purchase in the holdout | alive, rate) = exp(-rate x integral of c over the
    holdout)``, and 1 for a customer who dropped out before the holdout; ``purchase_propensity``
    likewise over the first 7 days of the holdout (0 if dropped out). The truth fields keep
    their names with these meanings: ``segment`` ``frequent`` (``rate`` >= 1/30 per day),
    ``regular`` (>= 1/120) or ``rare``; ``visit_rate`` = ``rate``; ``session_conversion`` = 1
    (every "visit" is a purchase); ``churn_hazard`` = ``rate x dropout`` (dropouts per day at
    ``c = 1``); ``churned`` = dropped out by the end of the run and ``churn_day`` = the day of
    the purchase after which it dropped out; ``signup_day`` = the day of the first purchase
    (a log has no signup). Two more: ``dropout_probability`` and ``alive_at_holdout``.

``cohort``: the shop's clickstream, one acquisition cohort
    The shop's sessions, funnels and purchases, but every registered customer signs up within
    the first :data:`ACQUISITION_DAYS` days (nobody exists before the start), most are
    ``churning`` with hazards such that most never return after a few weeks
    (:data:`COHORT_SEGMENTS`, :data:`COHORT_TRAITS`: about a quarter still active six weeks after
    signing up), and the day factor carries :func:`cohort_drift`. One-time browsers as in the shop.

``drift``: the shop with a strongly drifting base rate
    The shop's population, with the day factor multiplied by :func:`trend_drift`: traffic (and
    so purchases) falls from 1.6x to 0.4x over a year, so a model fitted on the early months
    overestimates the later ones.

In ``cohort`` and ``drift`` the drift is part of the day factor, which the shop's oracle already
integrates, so their truth is exact as in the shop.

Examples
--------
>>> from nextbest.simulator import SimConfig, generate
>>> from schemas.events import decode_event
>>> lines = list(generate(SimConfig(customers=50, days=60, seed=1, scenario="purchases")))
>>> sorted({decode_event(line).type for line in lines})
['purchase', 'refund']
>>> cohort = SimConfig(customers=30, days=20, seed=1, scenario="cohort")
>>> list(generate(cohort)) == list(generate(cohort))
True
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, Final

from nextbest.simulator import (
    DAY_MS,
    HOUR_MS,
    HOUR_WEIGHTS,
    PROPENSITY_HORIZON_DAYS,
    SimConfig,
    _Ev,
    _Person,
    _Sim,
)

__all__ = [
    "ACQUISITION_DAYS",
    "COHORT_SEGMENTS",
    "COHORT_TRAITS",
    "DRIFT_DAYS",
    "DRIFT_FLOOR",
    "DROPOUT_A",
    "DROPOUT_B",
    "RATE_MEAN",
    "RATE_SHAPE",
    "cohort_drift",
    "scenario_sim",
    "trend_drift",
]

#: Days over which a cohort's customers make their first purchase or sign up: a quarter.
ACQUISITION_DAYS: Final = 90
#: ``purchases``: shape and mean (per day) of the Gamma distribution of the purchase rate.
RATE_SHAPE: Final = 0.5
RATE_MEAN: Final = 1 / 60
#: ``purchases``: Beta(a, b) of the probability of dropping out after a purchase.
DROPOUT_A: Final = 1.0
DROPOUT_B: Final = 1.4
#: ``purchases`` and ``cohort``: the base rate's drift as the cohort ages (see cohort_drift).
DRIFT_FLOOR: Final = 0.45
DRIFT_DAYS: Final = 150.0
#: ``drift``: the factor at the start and after a year (log-linear in between and beyond).
TREND_START: Final = 1.6
TREND_YEAR: Final = 0.4
#: ``cohort``: segment shares and (median visit rate, mean conversion, median churn hazard).
COHORT_SEGMENTS: Final = (("loyal", 0.15), ("occasional", 0.35), ("churning", 0.5))
COHORT_TRAITS: Final[dict[str, tuple[float, float, float]]] = {
    "loyal": (0.6, 0.2, 0.004),
    "occasional": (0.25, 0.1, 0.03),
    "churning": (0.5, 0.1, 0.12),
}
#: ``purchases``: segment of a customer by its purchase rate per day (first threshold met).
_RATE_SEGMENTS: Final = ((1 / 30, "frequent"), (1 / 120, "regular"), (0.0, "rare"))


def cohort_drift(day: int) -> float:
    """The cohort's base-rate factor on ``day``: 1 at the start, slowly down towards 0.45.

    >>> [round(cohort_drift(d), 2) for d in (0, 90, 180, 360)]
    [1.0, 0.75, 0.62, 0.5]
    """
    return DRIFT_FLOOR + (1.0 - DRIFT_FLOOR) * math.exp(-day / DRIFT_DAYS)


def trend_drift(day: int) -> float:
    """The ``drift`` scenario's factor on ``day``: 1.6 at the start, 0.4 a year later.

    >>> [round(trend_drift(d), 2) for d in (0, 182, 365)]
    [1.6, 0.8, 0.4]
    """
    return TREND_START * math.pow(TREND_YEAR / TREND_START, day / 365.0)


class _Clock:
    """Operational time of a purchase process: ``at(t)`` is the expected number of purchases in
    ``[start, t)`` of an alive customer with rate 1, the intensity being constant within each
    hour (the day's factor x the hour's share of the day's traffic)."""

    def __init__(self, start_ms: int, day_factors: Sequence[float], hours: Sequence[float]) -> None:
        self.start_ms = start_ms
        norm = sum(hours)
        cum = [0.0]
        c = 0.0
        for f in day_factors:
            for w in hours:
                c += f * w / norm
                cum.append(c)
        self.cum = cum

    def at(self, ms: int) -> float:
        """Expected purchases at rate 1 from the start to ``ms`` (flat after the end)."""
        cum = self.cum
        k, rem = divmod(ms - self.start_ms, HOUR_MS)
        if k >= len(cum) - 1:
            return cum[-1]
        return cum[k] + (cum[k + 1] - cum[k]) * rem / HOUR_MS

    def time_of(self, c: float) -> int | None:
        """The time at which :meth:`at` reaches ``c``; ``None`` after the end."""
        cum = self.cum
        k = bisect_right(cum, c) - 1
        if k >= len(cum) - 1:
            return None
        lo, hi = cum[k], cum[k + 1]
        return self.start_ms + k * HOUR_MS + int((c - lo) / (hi - lo) * HOUR_MS)


class _Buyer(_Person):
    """A customer of the ``purchases`` scenario: ``rate`` is its purchase rate per day."""

    __slots__ = ("dropout",)

    def __init__(self, idx: int) -> None:
        super().__init__(idx)
        self.dropout = 0.0


class _PurchasesSim(_Sim):
    """``purchases``: a transaction log of one acquisition cohort, buy-till-you-die."""

    buyers: list[_Buyer]
    clock: _Clock
    #: Heap of (time of the next purchase, customer index) of the customers still alive.
    pending: list[tuple[int, int]]

    def _compute_day_factor(self, day: int) -> float:
        return super()._compute_day_factor(day) * cohort_drift(day)

    def _population(self) -> list[_Person]:
        rng = self.rng
        cfg = self.cfg
        start_hour = (self.start_ms % DAY_MS) // HOUR_MS
        hours = [HOUR_WEIGHTS[(start_hour + h) % 24] for h in range(24)]
        self.clock = clock = _Clock(
            self.start_ms, [self.day_factor(d) for d in range(cfg.days)], hours
        )
        acquired = clock.cum[min(ACQUISITION_DAYS, cfg.days) * 24] * (1.0 - 1e-12)
        scale = RATE_MEAN / RATE_SHAPE
        self.buyers = []
        self.pending = []
        for i in range(cfg.customers):
            p = _Buyer(i)
            p.cid = f"c-{i:07d}"
            p.rate = max(1e-9, rng.gammavariate(RATE_SHAPE, scale))
            p.dropout = rng.betavariate(DROPOUT_A, DROPOUT_B)
            p.conversion = 1.0
            p.hazard = p.rate * p.dropout
            p.segment = next(name for low, name in _RATE_SEGMENTS if p.rate >= low)
            first = clock.time_of(rng.random() * acquired)
            assert first is not None
            p.signup_day = p.first_day = (first - self.start_ms) // DAY_MS
            self._preferences(p)
            self.buyers.append(p)
            self.pending.append((first, i))
        heapq.heapify(self.pending)
        people: list[_Person] = list(self.buyers)
        return people

    def _basket(self, p: _Person, day: int) -> list[tuple[str, str, float, int]]:
        """A basket of fresh picks (a repeated pick is skipped as before the latent structure
        existed: by its shadow id, see ``_Sim._pick_product``; a product picked twice adds up)."""
        r = self.rng.random
        cart: list[tuple[str, str, float, int]] = []
        shadows: set[str] = set()
        for _ in range(1 + (r() < 0.3) + (r() < 0.1)):
            shadow, j = self._pick_product(p, day)
            if shadow not in shadows:
                shadows.add(shadow)
                prod = self.cat.items[j]
                q = 1 if r() < 0.8 else (2 if r() < 0.75 else 3)
                cart.append((prod[0], prod[1], prod[2], q))
        return cart

    def _buy(self, p: _Person, ts: int, out: list[_Ev]) -> None:
        """Append a purchase at ``ts`` (and queue its refund, if any)."""

        def add(typ: str, extra: dict[str, Any] | None, gap_ms: float) -> int:
            self.seq += 1  # no session around it: the purchase is at the drawn time
            out.append((ts, self.seq, p.idx, typ, p.cid, None, None, extra))
            return ts

        cart = self._basket(p, (ts - self.start_ms) // DAY_MS)
        self._purchase(p, cart, round(sum(pr * q for _, _, pr, q in cart), 2), add)

    def day_events(self, day: int) -> list[_Ev]:
        rng = self.rng
        clock = self.clock
        day_end = self.start_ms + (day + 1) * DAY_MS
        pending = self.pending
        out: list[_Ev] = []
        while pending and pending[0][0] < day_end:
            ts, i = heapq.heappop(pending)
            p = self.buyers[i]
            self._buy(p, ts, out)
            if rng.random() < p.dropout:
                p.churn_day = day
                continue
            nxt = clock.time_of(clock.at(ts) + rng.expovariate(p.rate))
            if nxt is not None:
                heapq.heappush(pending, (nxt, i))
        future = self.future
        while future and future[0][0] < day_end:
            out.append(heapq.heappop(future))
        out.sort()
        return out

    # -- truth: exact for the process above ------------------------------------------------------

    def _alive_mean(self, p: _Person, days: int) -> float | None:
        """Expected purchases of ``p`` over ``days`` days from the holdout start if still alive
        there (``None`` if it dropped out before)."""
        hold_day = self.cfg.days - self.cfg.holdout_days
        if p.churn_day < hold_day:
            return None
        c = self.clock
        return p.rate * (c.at(self.hold_ms + days * DAY_MS) - c.at(self.hold_ms))

    def purchase_propensity(self, p: _Person) -> float:
        mean = self._alive_mean(p, PROPENSITY_HORIZON_DAYS)
        return 0.0 if mean is None else 1.0 - math.exp(-mean)

    def churn_probability(self, p: _Person) -> float:
        mean = self._alive_mean(p, self.cfg.holdout_days)
        return 1.0 if mean is None else math.exp(-mean)

    def truth_row(self, p: _Person) -> dict[str, Any]:
        row = super().truth_row(p)
        row["dropout_probability"] = round(self.buyers[p.idx].dropout, 6)
        row["alive_at_holdout"] = p.churn_day >= self.cfg.days - self.cfg.holdout_days
        return row


class _CohortSim(_Sim):
    """``cohort``: the shop's clickstream for one acquisition cohort that mostly churns soon."""

    segments = COHORT_SEGMENTS
    segment_traits = COHORT_TRAITS
    existing_share = 0.0

    def signup_days(self) -> int:
        return min(ACQUISITION_DAYS, self.cfg.days)

    def _compute_day_factor(self, day: int) -> float:
        return super()._compute_day_factor(day) * cohort_drift(day)


class _DriftSim(_Sim):
    """``drift``: the shop with a base rate falling from 1.6x to 0.4x over a year."""

    def _compute_day_factor(self, day: int) -> float:
        return super()._compute_day_factor(day) * trend_drift(day)


_SIMS: Final[dict[str, type[_Sim]]] = {
    "shop": _Sim,
    "purchases": _PurchasesSim,
    "cohort": _CohortSim,
    "drift": _DriftSim,
}


def scenario_sim(cfg: SimConfig) -> _Sim:
    """The simulation of ``cfg.scenario``."""
    return _SIMS[cfg.scenario](cfg)

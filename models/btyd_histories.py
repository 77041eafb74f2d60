"""Buy-till-you-die histories (:mod:`models.btyd`): drawn from the model (:func:`sample`), one
customer's ``(x, t_x, T)`` from its purchase times (:func:`summarise`) or its profile
(:func:`history_of`), and the population's histories the dataflow fits the model on, once per
day of event time (:class:`Histories`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from models.btyd import BgNbdParams, FloatArray, IntArray, fit

DAY_MS: Final = 86_400_000
#: Fewer customers with a purchase than this, or fewer repeat buyers than ``MIN_REPEAT``: no fit.
MIN_CUSTOMERS: Final = 20
MIN_REPEAT: Final = 5


def history_of(
    purchases: int, first_ts: int | None, last_purchase_ts: int | None, as_of_ms: int
) -> tuple[float, float, float] | None:
    """``(x, t_x, T)`` in days of a profile as of a time, or ``None`` without a purchase.

    Times count from the customer's first event (their first purchase in a transaction log;
    earlier when they browsed before buying, an approximation the profile cannot avoid: it does
    not keep the first purchase's time). Repeat purchases on the first day count at half a day.

    >>> history_of(3, 0, 10 * DAY_MS, 30 * DAY_MS)
    (2.0, 10.0, 30.0)
    >>> history_of(1, 0, 0, 5 * DAY_MS), history_of(0, 0, None, 5 * DAY_MS)
    ((0.0, 0.0, 5.0), None)
    """
    if purchases < 1 or last_purchase_ts is None:
        return None
    origin = last_purchase_ts if first_ts is None else min(first_ts, last_purchase_ts)
    x = purchases - 1
    t_x = max((last_purchase_ts - origin) / DAY_MS, 0.5) if x > 0 else 0.0
    age = max((as_of_ms - origin) / DAY_MS, t_x, 0.5)
    return float(x), t_x, age


@dataclass(slots=True)
class Histories:
    """The population's purchase histories at day resolution: customers counted by (purchases,
    first day, last purchase day), updated as customers change; :meth:`fit_at` fits the model
    on them as of a day (every customer's age then).

    >>> h = Histories()
    >>> h.update(None, (1, 10, 10)); h.update((1, 10, 10), (2, 10, 15)); len(h), h.customers
    (1, 1)
    """

    counts: dict[tuple[int, int, int], int] = field(default_factory=dict)
    customers: int = 0

    def __len__(self) -> int:
        return len(self.counts)

    def update(self, old: tuple[int, int, int] | None, new: tuple[int, int, int] | None) -> None:
        """Move a customer from history ``old`` to ``new`` (``None``: absent)."""
        if old is not None:
            n = self.counts.get(old, 0)
            if n <= 1:
                self.counts.pop(old, None)
            else:
                self.counts[old] = n - 1
            self.customers -= 1 if n else 0
        if new is not None:
            self.counts[new] = self.counts.get(new, 0) + 1
            self.customers += 1

    def fit_at(self, day: int, init: BgNbdParams | None = None) -> BgNbdParams | None:
        """Maximum-likelihood parameters as of ``day`` (``None`` with too few customers)."""
        rows = [(k, n) for k, n in sorted(self.counts.items()) if k[0] >= 1 and k[1] <= day]
        if sum(n for _, n in rows) < MIN_CUSTOMERS:
            return None
        if sum(n for k, n in rows if k[0] >= 2) < MIN_REPEAT:
            return None
        xs, txs, ts, ws = [], [], [], []
        for (purchases, first, last), n in rows:
            x = purchases - 1
            t_x = max(last - first, 0.5) if x > 0 else 0.0
            xs.append(float(x))
            txs.append(t_x)
            ts.append(max(day - first + 0.5, t_x, 0.5))
            ws.append(float(n))
        return fit(xs, txs, ts, weights=ws, init=init)


def sample(
    params: BgNbdParams, n: int, T: float | npt.ArrayLike, rng: np.random.Generator
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Draw ``n`` customers' histories from the BG/NBD model.

    Each customer has ``lambda ~ Gamma(r, scale=1/alpha)`` and ``p ~ Beta(a, b)``, makes a first
    purchase at time 0, then buys as a Poisson process of rate ``lambda`` and drops out right
    after each repeat purchase with probability ``p`` (the process the likelihood describes).
    Drawn without simulating each purchase: the number of Poisson events in ``(0, T]`` is
    ``K ~ Poisson(lambda T)``, the repeat purchase after which the customer drops out is
    ``N ~ Geometric(p)`` on ``1, 2, ...``, so ``x = min(N, K)``, and the ``x``-th of ``K``
    uniform event times is ``t_x = T * Beta(x, K - x + 1)``.

    Parameters
    ----------
    params
        Model parameters (``alpha`` in days).
    n
        Number of customers (``>= 0``).
    T
        Observation period in days: one number for everyone, or one per customer (shape
        ``(n,)``).
    rng
        The random generator (the draws depend only on its state).

    Returns
    -------
    tuple
        ``(x, t_x, T)``: repeat purchases (int64), days to the last purchase and age in days
        (float64), each of shape ``(n,)``.

    Raises
    ------
    ValueError
        When ``n`` is negative, or ``T`` is negative, not finite, or of the wrong shape.

    Examples
    --------
    >>> p = BgNbdParams(r=0.25, alpha=4.0, a=0.8, b=2.5)
    >>> x, t_x, T = sample(p, 5, [30.0, 60.0, 90.0, 120.0, 150.0], np.random.default_rng(3))
    >>> x.dtype.name, t_x.shape, T.tolist()
    ('int64', (5,), [30.0, 60.0, 90.0, 120.0, 150.0])
    >>> bool(np.all((t_x <= T) & ((x > 0) | (t_x == 0))))
    True
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n (number of customers) must be an int >= 0, got {n!r}")
    Ts = np.asarray(T, dtype=np.float64)
    if Ts.ndim == 0:
        Ts = np.full(n, float(Ts))
    elif Ts.shape != (n,):
        raise ValueError(f"T must be a number or have shape ({n},), got shape {Ts.shape}")
    else:
        Ts = Ts.copy()
    if not np.all(np.isfinite(Ts) & (Ts >= 0)):
        raise ValueError("T (observation period in days) must be finite and >= 0")
    lam = rng.gamma(params.r, 1.0 / params.alpha, size=n)
    p = rng.beta(params.a, params.b, size=n)
    k = rng.poisson(lam * Ts)
    u = rng.random(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        # P(N > j) = (1 - p)^j; p == 0 (underflow of the Beta draw) never drops out
        n_drop = np.where(p > 0, np.floor(np.log1p(-u) / np.log1p(-p)) + 1.0, np.inf)
    x = np.minimum(n_drop, k).astype(np.int64)
    t_x = np.zeros(n)
    pos = x > 0
    t_x[pos] = Ts[pos] * rng.beta(x[pos], k[pos] - x[pos] + 1)
    return x, t_x, Ts


def summarise(
    purchase_times_days: Sequence[float], as_of_days: float
) -> tuple[int, float, float] | None:
    """One customer's BG/NBD history ``(x, t_x, T)`` from their purchase times.

    Parameters
    ----------
    purchase_times_days
        Times of the customer's purchases in days on any common clock, in any order. Equal
        times count as one purchase (the model's purchases never coincide): round the times
        to whole days first to count purchases per day, as is usual for BG/NBD.
    as_of_days
        The end of observation on the same clock. Purchases after it are not known yet and
        are ignored, so one list can be summarised at several dates (calibration/holdout).

    Returns
    -------
    tuple or None
        ``(x, t_x, T)`` with the first purchase as the origin: ``x`` = distinct purchase times
        - 1, ``t_x`` = last - first, ``T`` = ``as_of_days`` - first. ``None`` when there is no
        purchase at or before ``as_of_days``: BG/NBD describes customers from their first
        purchase on.

    Raises
    ------
    ValueError
        When a time is not a finite number.

    Examples
    --------
    >>> summarise([12.0, 5.0, 5.0, 30.0], as_of_days=20.0)  # 5.0 twice: once; 30.0: not yet
    (1, 7.0, 15.0)
    >>> summarise([12.0], as_of_days=12.0), summarise([12.0], as_of_days=11.0)
    ((0, 0.0, 0.0), None)
    """
    times = [float(v) for v in purchase_times_days]
    as_of = float(as_of_days)
    if not all(math.isfinite(v) for v in [*times, as_of]):
        raise ValueError("purchase times and as_of_days must be finite numbers")
    known = {v for v in times if v <= as_of}
    if not known:
        return None
    first, last = min(known), max(known)
    return len(known) - 1, last - first, as_of - first

"""Buy-till-you-die: the BG/NBD model of repeat purchasing (Fader, Hardie & Lee 2005).

(Long on purpose: the likelihood, its gradient, the fit, and a numerically careful expected-
purchases formula with its fallback belong together; histories are in
:mod:`models.btyd_histories`.)

The model explains a customer's purchases from their first purchase on, with two hidden
quantities per customer:

* while alive, the customer buys as a Poisson process with rate ``lambda`` (purchases per day);
  across customers ``lambda ~ Gamma(shape=r, rate=alpha)``;
* right after each *repeat* purchase the customer drops out ("dies") for good with probability
  ``p``; across customers ``p ~ Beta(a, b)``. The first purchase (time 0) is not a repeat
  purchase: nobody drops out before their first repeat purchase.

A customer's history is summarised by three numbers, all times in **days** measured from their
first purchase (the origin, time 0):

=======  ===========================================================================
``x``    repeat purchases: the number of purchases minus one
``t_x``  time of the last purchase (0 when ``x == 0``, > 0 when ``x > 0``)
``T``    the customer's age: time from the first purchase to the end of observation
=======  ===========================================================================

``alpha`` is therefore in days (``r / alpha`` is the mean purchase rate per day of a live
customer); parameters fitted on weeks convert with ``alpha_days = 7 * alpha_weeks`` (``r``,
``a`` and ``b`` have no unit).

Functions
---------
==========================  ==================================================================
:func:`log_likelihood`      total log-likelihood of histories (``float``)
:func:`fit`                 maximum-likelihood :class:`BgNbdParams` (optionally weighted)
:func:`p_alive`             P(alive at ``T`` | history), in ``[0, 1]``
:func:`expected_purchases`  E[purchases in ``(T, T + t]`` | history], ``>= 0``
==========================  ==================================================================

Histories — drawn from the model (``sample``), summarised from purchase times (``summarise``),
and a population's, for the dataflow's scheduled fit — are in :mod:`models.btyd_histories`.

Formulas (``G`` and ``B`` are the gamma and beta functions, ``[x > 0]`` is 1 when ``x > 0``
else 0):

* likelihood of one history (FHL 2005, eq. 6)::

      L = G(r + x) alpha^r / G(r) * (B(a, b + x) / B(a, b) / (alpha + T)^(r + x)
            + [x > 0] * B(a + 1, b + x - 1) / B(a, b) / (alpha + t_x)^(r + x))

  evaluated in log space (``gammaln`` and ``logaddexp`` of the two terms; their ratio is
  ``a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x)``);
* probability alive (eq. 13)::

      P(alive) = 1 / (1 + [x > 0] * a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x))

* expected purchases in the next ``t`` days (eq. 10)::

      E = P(alive) * (a + b + x - 1) / (a - 1)
            * (1 - ((alpha + T) / (alpha + T + t))^(r + x)
                 * 2F1(r + x, b + x; a + b + x - 1; t / (alpha + T + t)))

  computed through Euler's transformation, see :func:`expected_purchases` for the numerics.

Examples
--------
The CDNOW parameters of the paper (fitted in weeks: ``alpha = 4.414``) and its customer with 2
repeat purchases, the last at week 30.43, observed for 38.86 weeks; the paper's expectation for
the next 39 weeks is 1.226 purchases:

>>> params = BgNbdParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
>>> round(expected_purchases(params, 39 * 7, x=2, t_x=30.43 * 7, T=38.86 * 7), 3)
1.226
>>> round(p_alive(params, x=2, t_x=30.43 * 7, T=38.86 * 7), 3)
0.727
>>> p_alive(params, x=0, t_x=0.0, T=100.0)  # nobody drops out before a repeat purchase
1.0

Histories from purchase times (days), then a fit on simulated customers:

>>> from models.btyd_histories import sample, summarise
>>> summarise([3.0, 10.0, 17.5], as_of_days=40.0)  # 2 repeats, last at day 14.5, age 37
(2, 14.5, 37.0)
>>> summarise([], as_of_days=40.0) is None  # never bought: outside the model
True
>>> rng = np.random.default_rng(7)
>>> x, t_x, T = sample(params, 2000, 365.0, rng)
>>> fitted = fit(x, t_x, T)
>>> log_likelihood(fitted, x, t_x, T) >= log_likelihood(params, x, t_x, T)
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import integrate, optimize, special  # type: ignore[import-untyped]

__all__ = [
    "BgNbdParams",
    "expected_purchases",
    "fit",
    "log_likelihood",
    "p_alive",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: :func:`fit` keeps every parameter in ``[PARAM_MIN, PARAM_MAX]`` (bounds on the log scale)...
PARAM_MIN: Final = 1e-8
PARAM_MAX: Final = 1e8
#: ... and adds ``RIDGE * sum(log(param)^2)`` to the mean negative log-likelihood, so the
#: optimum is finite even when the data cannot pin a parameter down (nobody made a
#: repeat purchase, a handful of customers): such a parameter goes where the data are
#: indifferent, pulled gently towards 1. On real data the pull is negligible (it moves the
#: log-parameters by about ``RIDGE`` / the per-customer Fisher information).
RIDGE: Final = 1e-6
#: :func:`expected_purchases` integrates numerically when the hypergeometric form's bracket is
#: smaller than this (relative to the terms it is the difference of): cancellation would cost
#: more than about 5 of the 16 digits.
_CANCELLATION: Final = 1e-5
#: Repeat purchases at time 0 have probability 0 in the model and make the likelihood unbounded
#: (a purchase rate -> infinity explains them), so they are refused.
_SAME_TIME: Final = (
    "t_x must be > 0 when x > 0 (a repeat purchase comes after the first purchase; "
    "count purchases at the same time once, as summarise does)"
)


@dataclass(frozen=True)
class BgNbdParams:
    """BG/NBD parameters; time in days.

    Parameters
    ----------
    r, alpha
        Shape and rate (per day) of the Gamma distribution of purchase rates: a live customer
        buys ``r / alpha`` times a day on average.
    a, b
        Shapes of the Beta distribution of the drop-out probability after each repeat purchase
        (mean ``a / (a + b)``).

    Raises
    ------
    ValueError
        When a parameter is not a finite positive number (ints and numpy numbers are stored as
        ``float``).

    Examples
    --------
    >>> BgNbdParams(r=0.25, alpha=4, a=0.8, b=np.float32(2.5))
    BgNbdParams(r=0.25, alpha=4.0, a=0.8, b=2.5)
    >>> BgNbdParams(r=0.25, alpha=0.0, a=0.8, b=2.5)
    Traceback (most recent call last):
    ...
    ValueError: BG/NBD parameter alpha must be finite and > 0, got 0.0
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"BG/NBD parameter {name} must be a number, got {value!r}")
            number = float(value)
            if not (math.isfinite(number) and number > 0):
                raise ValueError(f"BG/NBD parameter {name} must be finite and > 0, got {value!r}")
            object.__setattr__(self, name, number)  # frozen: this is the one place it is set


# --------------------------------------------------------------------------------------------
# input checks


def _dot(u: FloatArray, v: FloatArray) -> float:
    """``u @ v`` without BLAS: OpenBLAS threads spin when the cores are busy (20x slower fits)."""
    return float(np.sum(u * v))


def _first(mask: npt.NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask)[0])


def _histories(
    x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, weights: npt.ArrayLike | None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Checked 1-d float arrays ``(x, t_x, T, weights)``; ValueError says what is wrong."""
    arrays = {}
    for name, value in (("x", x), ("t_x", t_x), ("T", T)):
        try:
            arrays[name] = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numbers: {exc}") from None
    xs, txs, Ts = arrays["x"], arrays["t_x"], arrays["T"]
    if not (xs.shape == txs.shape == Ts.shape):
        raise ValueError(
            f"x, t_x and T must have the same shape, got {xs.shape}, {txs.shape} and {Ts.shape}"
        )
    xs, txs, Ts = xs.ravel(), txs.ravel(), Ts.ravel()
    if xs.size == 0:
        raise ValueError("no customers: x, t_x and T are empty")
    for name, arr in (("x", xs), ("t_x", txs), ("T", Ts)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{name} must be finite: {name}[{_first(bad)}] is {arr[bad][0]}")
    checks = (
        (xs < 0, "x (repeat purchases) must be >= 0"),
        (xs != np.floor(xs), "x (repeat purchases) must be a whole number"),
        (txs < 0, "t_x (days to the last purchase) must be >= 0"),
        (txs > Ts, "t_x must be <= T (the last purchase cannot be after the end of observation)"),
        ((xs == 0) & (txs != 0), "t_x must be 0 when x == 0 (no repeat purchase)"),
        ((xs > 0) & (txs == 0), _SAME_TIME),
    )
    for bad, message in checks:
        if bad.any():
            i = _first(bad)
            raise ValueError(
                f"{message}: {int(bad.sum())} customer(s), first at index {i} "
                f"(x={xs[i]:g}, t_x={txs[i]:g}, T={Ts[i]:g})"
            )
    if weights is None:
        ws = np.ones_like(xs)
    else:
        ws = np.asarray(weights, dtype=np.float64)
        if ws.shape != arrays["x"].shape:
            raise ValueError(f"weights must have the shape of x, got {ws.shape} != {xs.shape}")
        ws = ws.ravel()
        bad = ~np.isfinite(ws) | (ws < 0)
        if bad.any():
            raise ValueError(
                f"weights must be finite and >= 0: weights[{_first(bad)}] is {ws[bad][0]}"
            )
        if not ws.sum() > 0:
            raise ValueError("weights must not all be 0")
    return xs, txs, Ts, ws


def _customer(x: float, t_x: float, T: float) -> None:
    """ValueError unless ``(x, t_x, T)`` is one valid history."""
    if not all(isinstance(v, int | float | np.integer | np.floating) for v in (x, t_x, T)):
        raise ValueError(f"x, t_x and T must be numbers, got {x!r}, {t_x!r}, {T!r}")
    if not (math.isfinite(x) and math.isfinite(t_x) and math.isfinite(T)):
        raise ValueError(f"x, t_x and T must be finite, got x={x}, t_x={t_x}, T={T}")
    if x < 0 or x != math.floor(x):
        raise ValueError(f"x (repeat purchases) must be a whole number >= 0, got {x}")
    if t_x < 0 or t_x > T:
        raise ValueError(
            f"need 0 <= t_x <= T (days since the first purchase), got t_x={t_x}, T={T}"
        )
    if x == 0 and t_x != 0:
        raise ValueError(f"t_x must be 0 when x == 0 (no repeat purchase), got t_x={t_x}")
    if x > 0 and t_x == 0:
        raise ValueError(f"{_SAME_TIME}: got x={x}, t_x=0")


# --------------------------------------------------------------------------------------------
# likelihood and fit


class _Objective:
    """Mean negative log-likelihood (plus the ridge) over log-parameters, and its gradient.

    The special functions of ``x`` are evaluated once per distinct ``x`` (repeat counts take few
    values), the rest is vectorised over customers.
    """

    def __init__(self, x: FloatArray, t_x: FloatArray, T: FloatArray, w: FloatArray) -> None:
        self.ux, self.inverse = np.unique(x, return_inverse=True)
        self.x, self.t_x, self.T = x, t_x, T
        self.w = w / w.sum()
        self.pos = x > 0
        self.upos = self.ux > 0

    def terms(self, params: BgNbdParams) -> tuple[FloatArray, dict[str, FloatArray]]:
        """Per-customer log-likelihoods and their derivatives in ``r, alpha, a, b``."""
        r, alpha, a, b = params.r, params.alpha, params.a, params.b
        ux, inv, pos = self.ux, self.inverse, self.pos
        rx = r + self.x
        log_aT = np.log(alpha + self.T)
        log_atx = np.log(alpha + self.t_x)
        log_b1 = np.log(np.where(self.upos, b + ux - 1.0, 1.0))  # log(b + x - 1), x > 0 only
        first = -rx * log_aT
        with np.errstate(divide="ignore"):
            second = np.where(pos, math.log(a) - log_b1[inv] - rx * log_atx, -np.inf)
        lse = np.logaddexp(first, second)
        w_first = np.exp(first - lse)
        w_second = np.exp(second - lse)  # 0 when x == 0
        # terms depending on x only, on the distinct x values
        g_u = (
            special.gammaln(r + ux)
            - special.gammaln(r)
            + special.gammaln(a + b)
            + special.gammaln(b + ux)
            - special.gammaln(b)
            - special.gammaln(a + b + ux)
        )
        ll = g_u[inv] + r * math.log(alpha) + lse
        psi_ab = special.digamma(a + b)
        psi_abx = special.digamma(a + b + ux)
        grads = {
            "r": (special.digamma(r + ux) - special.digamma(r))[inv]
            + math.log(alpha)
            - w_first * log_aT
            - w_second * log_atx,
            "alpha": r / alpha - rx * (w_first / (alpha + self.T) + w_second / (alpha + self.t_x)),
            "a": (psi_ab - psi_abx)[inv] + w_second / a,
            "b": (psi_ab + special.digamma(b + ux) - special.digamma(b) - psi_abx)[inv]
            - w_second / np.exp(log_b1[inv]),
        }
        return ll, grads

    def __call__(self, theta: FloatArray) -> tuple[float, FloatArray]:
        params = BgNbdParams(*(float(v) for v in np.exp(theta)))
        ll, grads = self.terms(params)
        value = -_dot(self.w, ll) + RIDGE * _dot(theta, theta)
        scale = np.exp(theta)  # d/d(log p) = p * d/dp
        grad = -np.array([_dot(self.w, grads[k]) for k in ("r", "alpha", "a", "b")]) * scale
        grad += 2.0 * RIDGE * theta
        if not (math.isfinite(value) and np.all(np.isfinite(grad))):
            # outside the region where the formulas are finite: let the line search back off
            return math.inf, np.zeros(4)
        return value, grad


def log_likelihood(
    params: BgNbdParams,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
) -> float:
    """Total log-likelihood of customer histories under the BG/NBD model.

    Parameters
    ----------
    params
        Model parameters (``alpha`` in days).
    x, t_x, T
        Per customer: repeat purchases, days from the first to the last purchase, days from the
        first purchase to the end of observation (scalars, sequences or arrays of one shape).
    weights
        Optional count of customers sharing each history (the sum is weighted).

    Returns
    -------
    float
        ``sum(weights * log L)``, ``L`` the likelihood of each history (module docstring).

    Raises
    ------
    ValueError
        On empty input, different shapes, or an impossible history: negative or fractional
        ``x``, ``t_x < 0``, ``t_x > T``, ``t_x != 0`` with ``x == 0``, ``t_x == 0`` with
        ``x > 0`` (repeat purchases at the first purchase's time), non-finite values.

    Examples
    --------
    With ``x == 0`` only the first term remains: ``(alpha / (alpha + T))^r``.

    >>> p = BgNbdParams(r=0.5, alpha=10.0, a=1.0, b=2.0)
    >>> round(log_likelihood(p, [0], [0.0], [30.0]), 6), round(0.5 * math.log(10 / 40), 6)
    (-0.693147, -0.693147)
    >>> log_likelihood(p, [0, 0], [0.0, 0.0], [30.0, 30.0]) == log_likelihood(
    ...     p, [0], [0.0], [30.0], weights=[2])
    True
    """
    xs, txs, Ts, ws = _histories(x, t_x, T, weights)
    ll, _ = _Objective(xs, txs, Ts, np.ones_like(xs)).terms(params)
    return _dot(ws, ll)


def fit(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    init: BgNbdParams | None = None,
) -> BgNbdParams:
    """Maximum-likelihood BG/NBD parameters for customer histories.

    L-BFGS-B on the log-parameters with the exact gradient, each parameter bounded to
    ``[PARAM_MIN, PARAM_MAX]``, and a tiny ridge on the log-parameters (``RIDGE``) so the answer
    is finite even when the data cannot identify a parameter (too few customers, nobody with a
    repeat purchase). Deterministic: the same input gives the same parameters. About 15-25
    likelihood evaluations of a few ms each: 20,000 customers fit in about 0.1 s.

    Parameters
    ----------
    x, t_x, T
        Histories as for :func:`log_likelihood` (days).
    weights
        Optional count of customers sharing each history, so callers can compress identical
        histories (the fit is the same as with the rows repeated).
    init
        Starting point; by default ``r = 1``, ``alpha`` = total age / total repeat purchases
        (so ``r / alpha`` is the observed repeat rate), ``a = 1``, ``b = 1``.

    Returns
    -------
    BgNbdParams
        The fitted parameters (``alpha`` in days).

    Raises
    ------
    ValueError
        On bad input (see :func:`log_likelihood`), or when the weights are all 0.
    RuntimeError
        When the optimiser fails to converge (not seen on valid data; the message says why).

    Examples
    --------
    >>> from models.btyd_histories import sample
    >>> truth = BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=3.0)
    >>> x, t_x, T = sample(truth, 3000, 180.0, np.random.default_rng(1))
    >>> fit(x, t_x, T) == fit(x, t_x, T)
    True
    """
    xs, txs, Ts, ws = _histories(x, t_x, T, weights)
    objective = _Objective(xs, txs, Ts, ws)
    if init is None:
        total_x, total_T = _dot(ws, xs), _dot(ws, Ts)
        alpha0 = total_T / total_x if total_x > 0 and total_T > 0 else 1.0
        init = BgNbdParams(r=1.0, alpha=alpha0, a=1.0, b=1.0)
    lo, hi = math.log(PARAM_MIN), math.log(PARAM_MAX)
    theta0 = np.clip(np.log(np.array(astuple(init), dtype=np.float64)), lo, hi)
    result = optimize.minimize(
        objective,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(lo, hi)] * 4,
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )
    theta = np.asarray(result.x, dtype=np.float64)
    value, grad = objective(theta)
    # L-BFGS-B may stop with a line-search warning when it cannot improve on a point that is
    # already optimal to working precision; accept that, refuse anything else.
    converged = result.success or float(np.max(np.abs(grad))) < 1e-5
    if not (converged and math.isfinite(value)):
        raise RuntimeError(f"BG/NBD fit did not converge: {result.message}")
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    return BgNbdParams(r=r, alpha=alpha, a=a, b=b)


# --------------------------------------------------------------------------------------------
# per-customer predictions


def _logistic_neg(z: float) -> float:
    """``1 / (1 + exp(z))`` without overflow."""
    if z > 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


def p_alive(params: BgNbdParams, x: float, t_x: float, T: float) -> float:
    """Probability that a customer is still alive at ``T``, given their history.

    ``1 / (1 + [x > 0] * a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x))``, computed
    as the logistic of the log-odds ``log a - log(b + x - 1) + (r + x) * log1p((T - t_x) /
    (alpha + t_x))``, so no power overflows.

    Parameters
    ----------
    params
        Model parameters (``alpha`` in days).
    x, t_x, T
        One customer's repeat purchases, days to the last purchase, age in days.

    Returns
    -------
    float
        In ``[0, 1]``; exactly 1 when ``x == 0`` (in BG/NBD nobody drops out before their first
        repeat purchase); for ``x > 0`` at most ``(b + x - 1) / (a + b + x - 1)`` (reached when
        ``t_x == T``: the customer may have dropped out right after that purchase) and falling
        as the days since the last purchase ``T - t_x`` grow.

    Raises
    ------
    ValueError
        When the history is impossible (see :func:`log_likelihood`).

    Examples
    --------
    >>> p = BgNbdParams(r=0.25, alpha=4.0, a=0.8, b=2.5)
    >>> [round(p_alive(p, 3, t_x, 100.0), 3) for t_x in (100.0, 90.0, 50.0, 10.0)]
    [0.849, 0.802, 0.401, 0.008]
    """
    _customer(x, t_x, T)
    if x == 0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_odds = math.log(a) - math.log(b + x - 1.0) + (r + x) * math.log1p((T - t_x) / (alpha + t_x))
    return _logistic_neg(log_odds)


def _alive_expectation_quad(
    r: float, alpha: float, a: float, b: float, t: float, x: float, T: float
) -> float:
    """E[purchases in t days | alive at T, history] by adaptive quadrature over ``p``.

    Given alive, ``lambda ~ Gamma(r + x, alpha + T)`` and ``p ~ Beta(a, b + x)``; a live
    customer makes ``(1 - exp(-lambda p t)) / p`` purchases in ``t`` days on average, and the
    mean over ``lambda`` is ``h(p) = (1 - (1 + p s)^-(r + x)) / p`` with ``s = t / (alpha + T)``.
    The result is ``E[h(p)]`` for ``p ~ Beta(a, b + x)``, integrated on ``[0, 1/2]`` and
    ``[1/2, 1]`` with the substitutions ``u = p^a`` (when ``a < 1``) and ``v = (1 - p)^(b + x)``
    (when ``b + x < 1``) that remove the density's integrable singularities, and break points
    where the integrand changes scale (the mode, the tail, ``1 / s``, ``1 / ((r + x) s)``).
    """
    s = t / (alpha + T)
    k = r + x
    beta = b + x
    log_beta = float(special.betaln(a, beta))

    def h(p: float) -> float:
        return -math.expm1(-k * math.log1p(s * p)) / p if p > 0 else k * s

    def quad(f: Callable[[float], float], lo: float, hi: float, points: list[float]) -> float:
        inside = sorted({q for q in points if lo < q < hi})
        value = integrate.quad(
            f, lo, hi, points=inside or None, limit=200, epsabs=0.0, epsrel=1e-11, full_output=1
        )[0]
        return float(value)

    mode = (a - 1) / (a + beta - 2) if a > 1 and beta > 1 else 0.0
    sd = math.sqrt(a * beta / ((a + beta) ** 2 * (a + beta + 1)))
    marks = [mode, mode + 5 * sd, mode + 20 * sd]
    marks += [1 / s, 1 / (k * s)] if k * s > 0 else []  # t can be so small that s is 0
    if a < 1:

        def left_u(u: float) -> float:
            p = u ** (1 / a)
            return h(p) * math.exp((beta - 1) * math.log1p(-p) - log_beta - math.log(a))

        total = quad(left_u, 0.0, 0.5**a, [m**a for m in marks if 0 < m < 0.5])
    else:

        def left(p: float) -> float:
            if p <= 0:
                return 0.0
            return h(p) * math.exp((a - 1) * math.log(p) + (beta - 1) * math.log1p(-p) - log_beta)

        total = quad(left, 0.0, 0.5, marks)
    if beta < 1:

        def right_v(v: float) -> float:
            q = v ** (1 / beta)
            return h(1 - q) * math.exp((a - 1) * math.log1p(-q) - log_beta - math.log(beta))

        total += quad(right_v, 0.0, 0.5**beta, [])
    else:

        def right(p: float) -> float:
            if p >= 1:
                return 0.0
            return h(p) * math.exp((a - 1) * math.log(p) + (beta - 1) * math.log1p(-p) - log_beta)

        total += quad(right, 0.5, 1.0, marks)
    return total


def expected_purchases(params: BgNbdParams, t: float, x: float, t_x: float, T: float) -> float:
    """Expected number of purchases in the next ``t`` days, given a customer's history.

    ``E = P(alive) * g`` with ``g`` the expectation for a customer known to be alive (module
    docstring, FHL 2005 eq. 10). With ``z = t / (alpha + T + t)`` and Euler's transformation
    ``2F1(A, B; C; z) = (1 - z)^(C - A - B) 2F1(C - A, C - B; C; z)``::

        g = (a + b + x - 1) / (a - 1)
            * (1 - (1 - z)^(a - 1) * 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z))

    The transformed series converges at ``z = 1`` whenever ``r + x + 1 > a`` and avoids the
    huge ``2F1`` of the paper's form, but ``scipy.special.hyp2f1`` still returns ``inf``/``nan``
    when ``z`` is near 1 and ``a + b + x`` is large (e.g. ``z >= 0.99``, ``x >= 100``), and the
    bracket ``1 - ...`` cancels when it is tiny (``a`` near 1, where the formula is 0/0, or
    ``t`` tiny). In those cases -- the bracket is not finite, is below ``_CANCELLATION``
    relative to its terms, or ``g`` falls outside its bounds ``0 <= g <= (r + x) t /
    (alpha + T)`` -- ``g`` is instead the integral ``E[(1 - (1 + p s)^-(r + x)) / p]`` over
    ``p ~ Beta(a, b + x)``, ``s = t / (alpha + T)`` (adaptive quadrature, relative error about
    1e-9), and the result is clipped to those bounds, so it is always finite and non-negative.
    Against mpmath at 50 digits over wide random parameters (``x`` up to 60,000, ``t`` up to
    ``1e7`` days, ``a`` within ``1e-12`` of 1) the relative error stayed below ``1e-8``.
    Typical customers take the ``hyp2f1`` path (a few microseconds); the integral takes about
    0.2 ms.

    Parameters
    ----------
    params
        Model parameters (``alpha`` in days).
    t
        Horizon in days (``>= 0``).
    x, t_x, T
        One customer's repeat purchases, days to the last purchase, age in days.

    Returns
    -------
    float
        ``>= 0``; 0 when ``t == 0``; non-decreasing in ``t`` (to about 1e-8 relative where the
        two methods meet); for ``x > 0`` falls as the days since the last purchase ``T - t_x``
        grow (through :func:`p_alive`). Unbounded in ``t``
        when ``a <= 1`` (the mean number of purchases before drop-out is then infinite).

    Raises
    ------
    ValueError
        When ``t`` is negative or not finite, or the history is impossible.

    Examples
    --------
    >>> p = BgNbdParams(r=0.25, alpha=4.0, a=0.8, b=2.5)
    >>> [round(expected_purchases(p, t, 3, 90.0, 100.0), 3) for t in (0.0, 30.0, 365.0)]
    [0.0, 0.7, 5.375]
    >>> round(expected_purchases(p, 30.0, 3, 10.0, 100.0), 4)  # last bought 90 days ago
    0.0072
    >>> q = BgNbdParams(r=0.25, alpha=4.0, a=1.0, b=2.5)  # a == 1: the 0/0 case, integrated
    >>> round(expected_purchases(q, 30.0, 3, 90.0, 100.0), 3)
    0.657
    """
    if not (isinstance(t, int | float | np.integer | np.floating) and math.isfinite(t) and t >= 0):
        raise ValueError(f"t (horizon in days) must be finite and >= 0, got {t!r}")
    alive = p_alive(params, x, t_x, T)  # also checks the history
    if t == 0:
        return 0.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    c = a + b + x - 1.0
    upper = (r + x) * t / (alpha + T)  # E[lambda | alive] * t: purchases if nobody dropped out
    log1mz = -math.log1p(t / (alpha + T))  # log(1 - z), accurate for small and large t
    g = math.nan
    if a != 1.0:
        with np.errstate(all="ignore"):
            h = float(special.hyp2f1(a + b - 1.0 - r, a - 1.0, c, -math.expm1(log1mz)))
            term = math.exp((a - 1.0) * log1mz) * h if math.isfinite(h) else math.nan
        bracket = 1.0 - term
        if math.isfinite(bracket) and abs(bracket) >= _CANCELLATION * max(1.0, abs(term)):
            g = c / (a - 1.0) * bracket
    if not (0.0 <= g <= upper * (1.0 + 1e-9)):  # also true for nan
        g = _alive_expectation_quad(r, alpha, a, b, t, x, T)
    return alive * min(max(g, 0.0), upper)

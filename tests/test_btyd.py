"""BG/NBD (models.btyd): recovery of known parameters, the likelihood, properties of the
predictions, reference values, input errors."""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special  # type: ignore[import-untyped]

from models.btyd import (
    BgNbdParams,
    expected_purchases,
    fit,
    log_likelihood,
    p_alive,
)
from models.btyd_histories import sample, summarise

#: The CDNOW parameters of Fader, Hardie & Lee (2005), fitted in weeks, and in days.
CDNOW_WEEKS = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
CDNOW_DAYS = BgNbdParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
PARAMS = BgNbdParams(r=0.25, alpha=4.0, a=0.8, b=2.5)


Histories = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


def _histories(params: BgNbdParams, n: int, seed: int) -> Histories:
    """``n`` simulated customers with ages uniform in 60..270 days."""
    rng = np.random.default_rng(seed)
    return sample(params, n, rng.uniform(60.0, 270.0, n), rng)


def _mean(f: Callable[[int, float, float], float], histories: Histories) -> float:
    """Population mean of a per-customer prediction."""
    x, t_x, T = histories
    return float(
        np.mean([f(int(a), float(b), float(c)) for a, b, c in zip(x, t_x, T, strict=True)])
    )


# --------------------------------------------------------------------------------------------
# recovery and the likelihood

# Tolerances are about 4 standard errors of each estimate at 20,000 customers (from the
# likelihood's curvature: r 1.2-2 %, alpha 2-3 %, a 3-10 %, b 5-13 %); estimates from these
# seeds are within 1.6 standard errors. A sampler or likelihood that disagree on when customers
# drop out, or a wrong gradient, misses them by far.
RECOVERY = [
    pytest.param(PARAMS, 1, {"r": 0.06, "alpha": 0.10, "a": 0.15, "b": 0.20}, id="brief"),
    pytest.param(CDNOW_DAYS, 2, {"r": 0.08, "alpha": 0.13, "a": 0.40, "b": 0.50}, id="cdnow"),
    pytest.param(
        BgNbdParams(r=1.5, alpha=30.0, a=2.0, b=6.0),
        3,
        {"r": 0.07, "alpha": 0.08, "a": 0.20, "b": 0.25},
        id="regular",
    ),
]


@pytest.mark.parametrize(("truth", "seed", "tolerance"), RECOVERY)
def test_fit_recovers_the_parameters_of_simulated_customers(
    truth: BgNbdParams, seed: int, tolerance: dict[str, float]
) -> None:
    histories = _histories(truth, 20_000, seed)
    fitted = fit(*histories)
    for name, tol in tolerance.items():
        got, want = getattr(fitted, name), getattr(truth, name)
        assert abs(got / want - 1) < tol, f"{name}: fitted {got:.4g}, true {want:.4g}"
    # what callers use: population means of P(alive) and of the next 180 days' purchases
    alive_fit = _mean(lambda x, t_x, T: p_alive(fitted, x, t_x, T), histories)
    alive_truth = _mean(lambda x, t_x, T: p_alive(truth, x, t_x, T), histories)
    assert abs(alive_fit / alive_truth - 1) < 0.03
    next_fit = _mean(lambda x, t_x, T: expected_purchases(fitted, 180.0, x, t_x, T), histories)
    next_truth = _mean(lambda x, t_x, T: expected_purchases(truth, 180.0, x, t_x, T), histories)
    assert abs(next_fit / next_truth - 1) < 0.04


def test_likelihood_is_highest_near_the_true_parameters() -> None:
    x, t_x, T = _histories(PARAMS, 5_000, 11)
    at_truth = log_likelihood(PARAMS, x, t_x, T)
    for name in ("r", "alpha", "a", "b"):
        for factor in (0.67, 1.5):
            value = getattr(PARAMS, name) * factor
            perturbed = dataclasses.replace(PARAMS, **{name: value})
            assert log_likelihood(perturbed, x, t_x, T) < at_truth, (name, factor)
    assert log_likelihood(fit(x, t_x, T), x, t_x, T) >= at_truth


def test_sampled_counts_match_the_model_for_new_customers() -> None:
    """Over ``(0, T]``: P(x = 0) = (alpha / (alpha + T))^r and FHL eq. 9 for E[x]."""
    r, alpha, a, b = 0.6, 8.0, 1.8, 4.0
    T, n = 180.0, 40_000
    x, _, _ = sample(BgNbdParams(r, alpha, a, b), n, T, np.random.default_rng(5))
    p0 = (alpha / (alpha + T)) ** r
    mean = (
        (a + b - 1)
        / (a - 1)
        * (1 - (alpha / (alpha + T)) ** r * special.hyp2f1(r, b, a + b - 1, T / (alpha + T)))
    )
    assert abs(np.mean(x == 0) - p0) < 4 * math.sqrt(p0 * (1 - p0) / n)
    assert abs(np.mean(x) - mean) < 4 * np.std(x) / math.sqrt(n)


def test_weights_are_repeated_rows() -> None:
    x, t_x, T = _histories(PARAMS, 400, 3)
    times = np.arange(1, 401) % 3 + 1
    repeated = [np.repeat(v, times) for v in (x, t_x, T)]
    assert log_likelihood(PARAMS, x, t_x, T, weights=times) == pytest.approx(
        log_likelihood(PARAMS, *repeated), rel=1e-12
    )
    weighted, expanded = fit(x, t_x, T, weights=times), fit(*repeated)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(weighted, name) == pytest.approx(getattr(expanded, name), rel=1e-5)


def test_params_pickle_and_are_stored_as_floats() -> None:
    params = BgNbdParams(r=1, alpha=2.5, a=3, b=0.5)  # numpy numbers: see the doctest
    assert pickle.loads(pickle.dumps(params)) == params
    assert all(type(v) is float for v in dataclasses.astuple(params))


def test_fit_and_sample_are_deterministic() -> None:
    a = _histories(PARAMS, 2_000, 9)
    b = _histories(PARAMS, 2_000, 9)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert fit(*a) == fit(*b)
    other_start = fit(*a, init=BgNbdParams(2.0, 10.0, 2.0, 2.0))  # same optimum
    assert dataclasses.astuple(other_start) == pytest.approx(dataclasses.astuple(fit(*a)), rel=1e-4)


def test_fit_stays_finite_when_the_data_cannot_identify_the_parameters() -> None:
    for x, t_x, T in (([0, 0, 0], [0.0, 0.0, 0.0], [10.0, 20.0, 30.0]), ([2], [5.0], [10.0])):
        fitted = fit(x, t_x, T)
        assert all(math.isfinite(v) and v > 0 for v in dataclasses.astuple(fitted))


def test_log_likelihood_changes_with_time_units_by_the_jacobian() -> None:
    """Days vs weeks: the density of the purchase times gains 1/7 per repeat purchase."""
    x, t_x, T = _histories(PARAMS, 1_000, 4)
    in_days = log_likelihood(CDNOW_DAYS, x, t_x, T)
    in_weeks = log_likelihood(CDNOW_WEEKS, x, t_x / 7, T / 7)
    assert in_days == pytest.approx(in_weeks - math.log(7) * float(np.sum(x)), rel=1e-12)


# --------------------------------------------------------------------------------------------
# reference values


def test_cdnow_customer_of_the_paper() -> None:
    """FHL 2005: 2 repeat purchases, the last at week 30.43, age 38.86 weeks -> 1.226 in 39."""
    weeks = expected_purchases(CDNOW_WEEKS, 39.0, 2, 30.43, 38.86)
    days = expected_purchases(CDNOW_DAYS, 39.0 * 7, 2, 30.43 * 7, 38.86 * 7)
    assert round(weeks, 3) == 1.226
    assert days == pytest.approx(weeks, rel=1e-12)
    assert p_alive(CDNOW_DAYS, 2, 30.43 * 7, 38.86 * 7) == pytest.approx(
        p_alive(CDNOW_WEEKS, 2, 30.43, 38.86), rel=1e-12
    )


# (r, alpha, a, b), (t, x, t_x, T), expected_purchases computed with mpmath 1.4.1 at 50 digits
# (the paper's form and mpmath.hyp2f1; a == 1 and a + b + x == 1 as limits)
MPMATH = [
    pytest.param(
        (2.0, 5.0, 3.0, 0.5), (3650.0, 200, 29.0, 30.0), 16.197818038259367, id="hyp2f1-nan"
    ),
    pytest.param(
        (0.5, 5.0, 0.5, 0.01), (3650.0, 150, 20.0, 30.0), 8.4314802778127658e-17, id="dead"
    ),
    pytest.param((0.25, 4.0, 1.0, 2.5), (30.0, 3, 90.0, 100.0), 0.65668573159152597, id="a=1"),
    pytest.param((0.25, 4.0, 1 + 1e-9, 2.5), (30.0, 3, 90.0, 100.0), 0.65668573141348362, id="a~1"),
    pytest.param((0.7, 2.0, 0.6, 0.4), (365.0, 0, 0.0, 200.0), 0.73395554859636069, id="c=0"),
    pytest.param(
        (0.25, 4.0, 0.8, 2.5), (0.001, 3, 90.0, 100.0), 2.5061526765722328e-5, id="tiny-t"
    ),
    pytest.param(
        (0.243, 4.414, 0.793, 2.426), (39.0, 2, 30.43, 38.86), 1.2260281747671445, id="cdnow"
    ),
]


@pytest.mark.parametrize(("params", "history", "want"), MPMATH)
def test_expected_purchases_matches_high_precision_values(
    params: tuple[float, float, float, float], history: tuple[float, int, float, float], want: float
) -> None:
    assert expected_purchases(BgNbdParams(*params), *history) == pytest.approx(want, rel=1e-8)


def _reference(params: BgNbdParams, t: float, x: int, t_x: float, T: float) -> float:
    """The expectation as an integral over the drop-out probability, without hyp2f1."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    alive = 1.0
    if x > 0:
        alive = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    s, k = t / (alpha + T), r + x

    def integrand(p: float) -> float:
        per_p = (1 - (1 + p * s) ** -k) / p  # mean over lambda of (1 - exp(-lambda p t)) / p
        return float(per_p * p ** (a - 1) * (1 - p) ** (b + x - 1)) / float(special.beta(a, b + x))

    points = [q for q in (1 / (k * s), 1 / s) if q < 1]
    value = integrate.quad(integrand, 0, 1, points=points or None, limit=200, epsrel=1e-11)[0]
    return alive * float(value)


@settings(max_examples=60, deadline=None)
@given(
    r=st.floats(0.05, 5.0),
    alpha=st.floats(0.5, 100.0),
    a=st.floats(0.6, 5.0),
    b=st.floats(1.0, 10.0),
    x=st.integers(0, 30),
    recency=st.floats(0.01, 1.0),
    T=st.floats(1.0, 1000.0),
    t=st.floats(0.1, 2000.0),
)
def test_expected_purchases_matches_the_integral(
    r: float, alpha: float, a: float, b: float, x: int, recency: float, T: float, t: float
) -> None:
    params = BgNbdParams(r, alpha, a, b)
    t_x = recency * T if x > 0 else 0.0
    want = _reference(params, t, x, t_x, T)
    assert expected_purchases(params, t, x, t_x, T) == pytest.approx(want, rel=1e-6, abs=1e-300)


# --------------------------------------------------------------------------------------------
# properties

params_st = st.builds(
    BgNbdParams,
    r=st.floats(0.01, 20.0),
    alpha=st.floats(0.01, 1000.0),
    a=st.floats(0.01, 50.0),
    b=st.floats(0.01, 50.0),
)
x_st = st.integers(0, 300)
T_st = st.floats(0.01, 3650.0)
frac_st = st.floats(0.0, 1.0)


def _t_x(x: int, frac: float, T: float) -> float:
    """A valid t_x: 0 when x == 0, in (0, T] when x > 0."""
    return 0.0 if x == 0 else max(frac * T, T * 1e-6)


@settings(max_examples=200, deadline=None)
@given(params=params_st, x=x_st, T=T_st, f1=frac_st, f2=frac_st)
def test_p_alive_is_a_probability_that_falls_with_days_since_the_last_purchase(
    params: BgNbdParams, x: int, T: float, f1: float, f2: float
) -> None:
    early, late = sorted((_t_x(x, f1, T), _t_x(x, f2, T)))
    p_early, p_late = p_alive(params, x, early, T), p_alive(params, x, late, T)
    assert 0.0 <= p_early <= p_late <= 1.0  # same age, more recent last purchase: more alive
    if x == 0:
        assert p_early == 1.0
    else:  # at most the chance of not dropping out right after the last purchase
        assert p_late <= (params.b + x - 1) / (params.a + params.b + x - 1) * (1 + 1e-12)
    older = T * (1 + f1) + 1.0  # same last purchase, observed longer without a purchase
    assert p_alive(params, x, late, older) <= p_late


@settings(max_examples=150, deadline=None)
@given(
    params=params_st,
    x=x_st,
    T=T_st,
    f1=frac_st,
    f2=frac_st,
    t1=st.floats(0.0, 20_000.0),
    t2=st.floats(0.0, 20_000.0),
)
def test_expected_purchases_is_finite_non_negative_and_monotone(
    params: BgNbdParams, x: int, T: float, f1: float, f2: float, t1: float, t2: float
) -> None:
    short, long = sorted((t1, t2))
    t_x = _t_x(x, f1, T)
    e_short = expected_purchases(params, short, x, t_x, T)
    e_long = expected_purchases(params, long, x, t_x, T)
    assert math.isfinite(e_long)
    assert 0.0 <= e_short <= e_long * (1 + 1e-8)  # longer horizon: no fewer purchases
    # at most what a customer sure to be alive buys at the posterior mean rate
    assert e_long <= (params.r + x) * long / (params.alpha + T) * (1 + 1e-9)
    if x > 0:
        early, late = sorted((t_x, _t_x(x, f2, T)))
        assert expected_purchases(params, long, x, early, T) <= expected_purchases(
            params, long, x, late, T
        )


@settings(max_examples=100, deadline=None)
@given(
    x=st.integers(0, 50),
    T=st.floats(0.5, 1000.0),
    frac=st.floats(0.01, 1.0),
    t=st.floats(0.01, 10_000.0),
    gap=st.sampled_from([1e-12, 1e-9, 1e-7, 1e-5, 1e-3]),
)
def test_expected_purchases_is_continuous_across_a_equal_1(
    x: int, T: float, frac: float, t: float, gap: float
) -> None:
    """The formula is 0/0 at a == 1: the numerics must not jump there."""
    t_x = _t_x(x, frac, T)
    at_1 = expected_purchases(BgNbdParams(0.5, 10.0, 1.0, 2.0), t, x, t_x, T)
    for near in (1 - gap, 1 + gap):
        value = expected_purchases(BgNbdParams(0.5, 10.0, near, 2.0), t, x, t_x, T)
        assert value == pytest.approx(at_1, rel=max(10 * gap, 1e-8))


@settings(max_examples=100, deadline=None)
@given(
    times=st.lists(st.integers(-1000, 1000), max_size=20),
    as_of=st.integers(-1000, 2000),
    shift=st.integers(-1000, 1000),
)
def test_summarise_gives_valid_histories(times: list[int], as_of: int, shift: int) -> None:
    got = summarise([float(v) for v in times], float(as_of))
    known = sorted({v for v in times if v <= as_of})
    if not known:
        assert got is None
        return
    assert got == (len(known) - 1, float(known[-1] - known[0]), float(as_of - known[0]))
    x, t_x, T = got
    assert math.isfinite(log_likelihood(PARAMS, [x], [t_x], [T]))  # accepted as a history
    shifted = summarise([float(v + shift) for v in reversed(times)], float(as_of + shift))
    assert shifted == got


def test_sample_shapes_and_invariants() -> None:
    rng = np.random.default_rng(0)
    T = rng.uniform(0.0, 400.0, 3_000)
    x, t_x, T_out = sample(PARAMS, 3_000, T, rng)
    assert x.dtype == np.int64 and t_x.dtype == np.float64 and np.array_equal(T_out, T)
    assert np.all(x >= 0) and np.all((t_x >= 0) & (t_x <= T))
    assert np.all((x > 0) == (t_x > 0))
    x1, t1, T1 = sample(PARAMS, 5, 30.0, np.random.default_rng(0))
    assert x1.shape == t1.shape == T1.shape == (5,) and np.all(T1 == 30.0)
    assert [a.size for a in sample(PARAMS, 0, 30.0, rng)] == [0, 0, 0]


# --------------------------------------------------------------------------------------------
# bad input

BAD_HISTORIES = [
    pytest.param([], [], [], "no customers", id="empty"),
    pytest.param([1, 2], [1.0], [2.0, 3.0], "same shape", id="shapes"),
    pytest.param([1], [5.0], [4.0], "t_x must be <= T", id="t_x>T"),
    pytest.param([-1], [0.0], [4.0], "x .repeat purchases. must be >= 0", id="negative-x"),
    pytest.param([1.5], [1.0], [4.0], "whole number", id="fractional-x"),
    pytest.param([0], [1.0], [4.0], "t_x must be 0 when x == 0", id="x=0,t_x>0"),
    pytest.param([2], [0.0], [4.0], "t_x must be > 0 when x > 0", id="x>0,t_x=0"),
    pytest.param([0], [-1.0], [4.0], "t_x .* must be >= 0", id="negative-t_x"),
    pytest.param([1], [1.0], [math.nan], "T must be finite", id="nan"),
    pytest.param([1], ["a"], [1.0], "t_x must be numbers", id="text"),
]


@pytest.mark.parametrize(("x", "t_x", "T", "message"), BAD_HISTORIES)
def test_bad_histories_are_refused_with_a_clear_message(
    x: list[float], t_x: list[float], T: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        log_likelihood(PARAMS, x, t_x, T)
    with pytest.raises(ValueError, match=message):
        fit(x, t_x, T)


def test_bad_weights_params_and_arguments_are_refused() -> None:
    h = ([1, 0], [2.0, 0.0], [5.0, 5.0])
    for weights, message in (([1.0], "shape"), ([1.0, -1.0], ">= 0"), ([0.0, 0.0], "all be 0")):
        with pytest.raises(ValueError, match=message):
            fit(*h, weights=weights)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        BgNbdParams(r=1.0, alpha=-1.0, a=1.0, b=1.0)
    with pytest.raises(ValueError, match="r must be finite"):
        BgNbdParams(r=math.inf, alpha=1.0, a=1.0, b=1.0)
    with pytest.raises(ValueError, match="horizon"):
        expected_purchases(PARAMS, -1.0, 1, 2.0, 5.0)
    with pytest.raises(ValueError, match="t_x <= T"):
        p_alive(PARAMS, 1, 6.0, 5.0)
    with pytest.raises(ValueError, match="t_x must be > 0 when x > 0"):
        expected_purchases(PARAMS, 10.0, 1, 0.0, 5.0)
    with pytest.raises(ValueError, match="whole number"):
        p_alive(PARAMS, 1.5, 2.0, 5.0)
    with pytest.raises(ValueError, match="number of customers"):
        sample(PARAMS, -1, 30.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        sample(PARAMS, 3, [30.0, 40.0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        summarise([1.0, math.nan], 5.0)

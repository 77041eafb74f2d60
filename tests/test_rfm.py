"""RFM value tiers: histogram quintiles against exact quantiles, updates, encodings, segments."""

from __future__ import annotations

import doctest
import math
import pickle
import random
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import features.rfm as rfm
from features.rfm import (
    DAY_MS,
    FREQUENCY_EDGES,
    HOUR_MS,
    MONETARY_EDGES,
    SEGMENT_TABLE,
    SEGMENTS,
    RfmBoundaries,
    RfmPoint,
    RfmPopulation,
    rfm_fields,
    rfm_point,
    score,
    segment,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
YEAR_MS = 365 * DAY_MS

# --- a reference written from the documented binning, by linear search ---------------------------


def ref_f_bin(v: int) -> tuple[float, float]:
    """[lower, upper) of the frequency bin holding v."""
    lower: float = -math.inf
    for e in FREQUENCY_EDGES:
        if v < e:
            return lower, e
        lower = e
    return lower, math.inf


def ref_m_bin(v: float) -> tuple[float, float]:
    lower = -math.inf
    for e in MONETARY_EDGES:
        if v < e:
            return lower, e
        lower = e
    return lower, math.inf


def ref_r_bin(ts: int, newest: int) -> tuple[float, float]:
    hour0 = newest // HOUR_MS - 719  # 30 days of hours ending with the newest purchase's hour
    day0 = newest // DAY_MS - 1095  # 1,096 days ending with its day
    if ts // HOUR_MS >= hour0:
        lo = ts // HOUR_MS * HOUR_MS
        return lo, lo + HOUR_MS
    if ts // DAY_MS >= day0:
        lo = ts // DAY_MS * DAY_MS
        return lo, min(lo + DAY_MS, hour0 * HOUR_MS)
    return -math.inf, day0 * DAY_MS


def exact_cuts(values: list[float], bin_of: Callable[[float], tuple[float, float]]) -> list[float]:
    """Upper edge of the bin of the ceil(k N / 5)-th smallest value, k = 1..4."""
    xs = sorted(values)
    n = len(xs)
    return [bin_of(xs[math.ceil(k * n / 5) - 1])[1] for k in (1, 2, 3, 4)]


def rank_min_quintile(values: list[float], v: float) -> int:
    """Exact quintile with ties resolved down: 1 + #{k : count(values < v) >= k N / 5}."""
    below = sum(1 for x in values if x < v)
    return 1 + sum(1 for k in (1, 2, 3, 4) if 5 * below >= k * len(values))


def build(points: list[RfmPoint], min_population: int = 1) -> RfmPopulation:
    pop = RfmPopulation(min_population=min_population)
    for p in points:
        pop.update(None, p)
    return pop


# --- strategies --------------------------------------------------------------------------------

frequencies = st.one_of(
    st.just(1), st.just(1), st.just(1), st.integers(1, 5), st.integers(1, 60), st.integers(1, 5000)
)
monetaries = st.one_of(
    st.floats(0.01, 1e6, allow_nan=False),
    st.sampled_from([0.0, -12.5, 9.99, 19.99, 0.005]),
    st.floats(-1e4, 1e8, allow_nan=False),
)
timestamps = st.one_of(
    st.integers(NOW - 5 * YEAR_MS, NOW),
    st.integers(NOW - 3 * DAY_MS, NOW),
    st.sampled_from([NOW, NOW - 1, NOW - 40 * DAY_MS]),
)
points = st.builds(RfmPoint, timestamps, frequencies, monetaries)
populations = st.lists(points, min_size=1, max_size=250)


# --- quintiles against exact quantiles -----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(populations)
def test_cut_points_are_exact_quantiles_rounded_up_to_a_bin_edge(ps: list[RfmPoint]) -> None:
    pop = build(ps)
    b = pop.boundaries(computed_at_ms=123)
    assert b is not None and b.population == len(ps) and b.computed_at_ms == 123
    newest = max(p.last_purchase_ts for p in ps)
    assert list(b.f) == exact_cuts([p.frequency for p in ps], lambda v: ref_f_bin(int(v)))
    assert list(b.m) == exact_cuts([p.monetary for p in ps], ref_m_bin)
    r_cuts = exact_cuts([p.last_purchase_ts for p in ps], lambda v: ref_r_bin(int(v), newest))
    assert list(b.r) == r_cuts


@settings(max_examples=150, deadline=None)
@given(populations)
def test_scores_are_rank_min_quintiles_of_the_binned_values(ps: list[RfmPoint]) -> None:
    """The documented equivalence, and agreement with the unbinned exact quintile outside the
    bins that hold a quantile."""
    b = build(ps).boundaries()
    assert b is not None
    newest = max(p.last_purchase_ts for p in ps)
    dims: list[tuple[list[float], Callable[[float], tuple[float, float]]]] = [
        ([p.last_purchase_ts for p in ps], lambda v: ref_r_bin(int(v), newest)),
        ([p.frequency for p in ps], lambda v: ref_f_bin(int(v))),
        ([p.monetary for p in ps], ref_m_bin),
    ]
    for i, p in enumerate(ps):
        got = score(p, b)
        for d, (values, bin_of) in enumerate(dims):
            binned = [bin_of(x)[0] for x in values]
            assert got[d] == rank_min_quintile(binned, bin_of(values[i])[0])
            quantile_bins = {bin_of(x) for x in exact_quantile_values(values)}
            if bin_of(values[i]) not in quantile_bins:
                assert got[d] == rank_min_quintile(values, values[i])


def exact_quantile_values(values: list[float]) -> list[float]:
    xs = sorted(values)
    return [xs[math.ceil(k * len(xs) / 5) - 1] for k in (1, 2, 3, 4)]


def shares(scores: list[int]) -> list[float]:
    c = Counter(scores)
    return [c[k] / len(scores) for k in (1, 2, 3, 4, 5)]


@settings(max_examples=100, deadline=None)
@given(populations)
def test_each_score_share_is_within_the_largest_bin_share_of_20_percent(
    ps: list[RfmPoint],
) -> None:
    """Documented tolerance: |share - 20 %| <= w + 1/N, w = largest share of one bin."""
    pop = build(ps)
    b = pop.boundaries()
    assert b is not None
    n = len(ps)
    scored = [score(p, b) for p in ps]
    for d, counts in enumerate((pop.r_counts, pop.f_counts, pop.m_counts)):
        w = max(counts.values()) / n
        for s in shares([t[d] for t in scored]):
            assert abs(s - 0.2) <= w + 1 / n + 1e-12


def test_continuous_values_split_into_fifths_within_two_points() -> None:
    rng = random.Random(7)
    ps = [
        RfmPoint(
            NOW - int(rng.expovariate(1 / (90 * DAY_MS))),
            1 + int(rng.paretovariate(1.2)),
            rng.lognormvariate(4.0, 1.2),
        )
        for _ in range(5000)
    ]
    b = build(ps).boundaries()
    assert b is not None
    scored = [score(p, b) for p in ps]
    for d in (0, 2):  # recency and monetary are continuous here
        for s in shares([t[d] for t in scored]):
            assert abs(s - 0.2) <= 0.02, (d, s)


def test_heavy_ties_one_time_buyers_all_get_f_1() -> None:
    rng = random.Random(3)
    freqs = [1] * 700 + [rng.choice([2, 2, 2, 3, 3, 4, 5, 8, 13, 40]) for _ in range(300)]
    ps = [RfmPoint(NOW - i * HOUR_MS, f, 10.0 + i) for i, f in enumerate(freqs)]
    b = build(ps).boundaries()
    assert b is not None
    by_f: dict[int, set[int]] = {}
    for p in ps:
        by_f.setdefault(p.frequency, set()).add(score(p, b)[1])
    assert by_f[1] == {1}
    assert all(len(s) == 1 for s in by_f.values())  # equal values, equal scores
    ordered = [next(iter(by_f[f])) for f in sorted(by_f)]
    assert ordered == sorted(ordered)  # monotone
    assert max(ordered) == 5


@settings(max_examples=100, deadline=None)
@given(populations, points, points)
def test_scores_are_monotone(ps: list[RfmPoint], a: RfmPoint, c: RfmPoint) -> None:
    b = build(ps).boundaries()
    assert b is not None
    lo = RfmPoint(
        min(a.last_purchase_ts, c.last_purchase_ts),
        min(a.frequency, c.frequency),
        min(a.monetary, c.monetary),
    )
    hi = RfmPoint(
        max(a.last_purchase_ts, c.last_purchase_ts),
        max(a.frequency, c.frequency),
        max(a.monetary, c.monetary),
    )
    s_lo, s_hi = score(lo, b), score(hi, b)
    assert all(1 <= x <= y <= 5 for x, y in zip(s_lo, s_hi, strict=True))
    assert score(a, b) == score(RfmPoint(a.last_purchase_ts, a.frequency, a.monetary), b)


def test_newest_purchase_scores_r_5_and_the_oldest_r_1() -> None:
    ps = [RfmPoint(NOW - i * DAY_MS, 1, 10.0) for i in range(50)]
    b = build(ps).boundaries()
    assert b is not None
    assert score(ps[0], b)[0] == 5
    assert score(ps[-1], b)[0] == 1
    assert score(RfmPoint(NOW + YEAR_MS, 1, 10.0), b)[0] == 5  # unseen values score too


# --- incremental updates -------------------------------------------------------------------------

customer_updates = st.lists(
    st.tuples(st.integers(0, 15), st.one_of(st.none(), points)), min_size=1, max_size=120
)


@settings(max_examples=150, deadline=None)
@given(customer_updates)
def test_updates_move_customers_and_match_histograms_of_the_current_points(
    ups: list[tuple[int, RfmPoint | None]],
) -> None:
    pop = RfmPopulation()
    current: dict[int, RfmPoint] = {}
    newest: int | None = None
    for cid, new in ups:
        pop.update(current.get(cid), new)
        if new is None:
            current.pop(cid, None)
        else:
            current[cid] = new
        if not current:
            newest = None
        elif new is not None:
            newest = new.last_purchase_ts if newest is None else max(newest, new.last_purchase_ts)
        assert pop.size == len(current)
        assert pop.newest_ts == newest
    if not current:
        assert pop == RfmPopulation()
        return
    assert newest is not None
    vals = list(current.values())
    lower_edges = [ref_r_bin(p.last_purchase_ts, newest)[0] for p in vals]
    assert pop.r_counts == Counter(int(e) if e > -math.inf else rfm._R_OLDER for e in lower_edges)
    fresh = RfmPopulation()
    for p in vals:
        fresh.update(None, p)
    assert (pop.f_counts, pop.m_counts) == (fresh.f_counts, fresh.m_counts)
    if fresh.newest_ts == newest:  # same recency origin: the very same state as from scratch
        assert pop == fresh
        assert pop.boundaries(1) == fresh.boundaries(1)


def test_move_keeps_size_and_removing_everyone_returns_to_empty() -> None:
    pop = RfmPopulation()
    ps = [RfmPoint(NOW - i * 7 * DAY_MS, 1 + i % 4, 5.0 * i) for i in range(30)]
    for p in ps:
        pop.update(None, p)
    assert pop.size == 30
    moved = RfmPoint(NOW + 2 * YEAR_MS, 99, 1e5)  # far newer: the recency bins all move
    pop.update(ps[0], moved)
    assert pop.size == 30
    pop.update(moved, moved)
    assert pop.size == 30
    assert pop.boundaries() is not None
    for p in [moved, *ps[1:]]:
        pop.update(p, None)
    assert pop.size == 0
    assert pop.boundaries() is None
    assert pop == RfmPopulation()


def test_removing_an_unknown_point_raises() -> None:
    pop = RfmPopulation()
    with pytest.raises(ValueError):
        pop.update(RfmPoint(NOW, 1, 1.0), None)
    pop.update(None, RfmPoint(NOW, 1, 1.0))
    with pytest.raises(ValueError):
        pop.update(RfmPoint(NOW, 2, 1.0), None)
    assert pop.size == 1


def test_boundaries_need_min_population() -> None:
    pop = RfmPopulation()
    for i in range(19):
        pop.update(None, RfmPoint(NOW - i, 1, 1.0))
    assert pop.boundaries() is None
    pop.update(None, RfmPoint(NOW, 1, 1.0))
    assert pop.boundaries() is not None


def test_memory_is_bounded_whatever_the_population() -> None:
    rng = random.Random(1)
    pop = RfmPopulation()
    for i in range(20_000):
        ts = NOW - rng.randrange(10 * YEAR_MS) + i * HOUR_MS  # ten years, the origin moving on
        pop.update(None, RfmPoint(ts, rng.randrange(1, 10**7), rng.uniform(-100, 1e11)))
    assert len(pop.r_counts) <= 720 + 1096 + 1
    assert len(pop.f_counts) <= len(FREQUENCY_EDGES) + 1
    assert len(pop.m_counts) <= len(MONETARY_EDGES) + 1
    assert len(pickle.dumps(pop)) < 64_000


# --- state and encodings -------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(populations)
def test_population_pickles_and_boundaries_round_trip(ps: list[RfmPoint]) -> None:
    pop = build(ps)
    again = pickle.loads(pickle.dumps(pop))
    assert again == pop
    b = pop.boundaries(computed_at_ms=NOW)
    assert b is not None
    data = b.encode()
    assert RfmBoundaries.decode(data) == b
    assert RfmBoundaries.decode(data.decode()) == b
    assert len(data) < 250
    assert pickle.loads(pickle.dumps(b)) == b
    assert pickle.loads(pickle.dumps(ps[0])) == ps[0]


def test_decode_rejects_bad_boundaries() -> None:
    good = RfmBoundaries(
        r=(1, 2, 3, 4), f=(1, 1, 2, 3), m=(0.5, 1.0, 2.0, 3.0), population=5, computed_at_ms=0
    )
    assert RfmBoundaries.decode(good.encode()) == good
    with pytest.raises(msgspec.ValidationError):
        RfmBoundaries.decode(good.encode().replace(b'"f":[1,1,2,3]', b'"f":[3,1,2,3]'))
    with pytest.raises(msgspec.ValidationError):
        RfmBoundaries.decode(
            b'{"r":[1,2,3],"f":[1,1,1,1],"m":[1,1,1,1],"population":1,"computed_at_ms":0}'
        )
    with pytest.raises(msgspec.DecodeError):
        RfmBoundaries.decode(b"not json")


# --- segments and profile fields -----------------------------------------------------------------

EXPECTED_GRID = {  # rows r = 5..1, columns f = 1..5, as documented
    5: ["new_customers", "potential_loyalist", "loyal", "champions", "champions"],
    4: ["promising", "potential_loyalist", "loyal", "champions", "champions"],
    3: ["about_to_sleep", "need_attention", "loyal", "loyal", "loyal"],
    2: ["hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"],
    1: ["hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"],
}


def test_segment_mapping_is_total_and_matches_the_table() -> None:
    for r in range(1, 6):
        for f in range(1, 6):
            names = {segment(r, f, m) for m in range(1, 6)}
            assert names == {EXPECTED_GRID[r][f - 1]}  # m does not take part
            assert any(r in rs and f in fs for _, rs, fs in SEGMENT_TABLE)
    used = {name for row in EXPECTED_GRID.values() for name in row}
    assert used == set(SEGMENTS) - {"prospect", "unscored"}
    for bad in [(0, 3, 3), (6, 3, 3), (3, 0, 3), (3, 6, 3)]:
        with pytest.raises(ValueError):
            segment(*bad)


def test_rfm_fields_prospect_unscored_and_scored() -> None:
    b = build([RfmPoint(NOW - i * DAY_MS, 1 + i, 10.0 * i) for i in range(25)]).boundaries()
    assert b is not None
    none = {"rfm_r": None, "rfm_f": None, "rfm_m": None}
    assert rfm_fields(None, b) == {**none, "rfm_segment": "prospect"}
    assert rfm_fields(None, None) == {**none, "rfm_segment": "prospect"}
    assert rfm_fields(RfmPoint(NOW, 0, 0.0), b) == {**none, "rfm_segment": "prospect"}
    assert rfm_fields(RfmPoint(NOW, 3, 30.0), None) == {**none, "rfm_segment": "unscored"}
    got = rfm_fields(RfmPoint(NOW, 30, 1e6), b)
    assert got == {"rfm_r": 5, "rfm_f": 5, "rfm_m": 5, "rfm_segment": "champions"}
    assert rfm_point(0, 0.0, NOW) is None
    assert rfm_point(1, 0.0, None) is None
    assert rfm_point(3, -2.5, NOW) == RfmPoint(NOW, 3, -2.5)


def test_module_doctests() -> None:
    result = doctest.testmod(rfm)
    assert result.attempted > 10 and result.failed == 0

"""What a marketer can rely on: holding everything else equal, more days since the last purchase
or visit never lowers churn (never raises propensity), and more purchases (at the same average
order value) never raise churn (never lower propensity), whatever the model learned. Checked on
synthetic profiles, with models trained on examples whose labels run *against* those directions
(the model would learn the wrong slope without its constraints)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.profile import ProfileView
from models.features import FEATURE_NAMES, feature_vector
from models.labels import Example
from models.online import OnlineModel

DAY = 86_400_000
AS_OF = 1_790_000_000_000


def _adversarial(
    target: str, n: int = 3000, seed: int = 1, unconstrained: bool = False
) -> OnlineModel:
    """A model trained where churn *falls* with recency and *rises* with purchases (and the
    reverse for propensity): the constraints must hold the slopes at zero instead."""
    rng = random.Random(seed)
    m = OnlineModel(target, min_examples=10)
    if unconstrained:
        m.estimator["MonotoneLogisticRegression"].signs = {}
    for i in range(n):
        f = {name: rng.uniform(0.0, 3.0) for name in FEATURE_NAMES}
        wrong = (
            f["log_days_since_last_purchase"] + f["log_days_since_last_seen"]
            < f["log_purchases_total"] + f["log_revenue_total"]
        )
        label = int(wrong) if target == "churn" else int(not wrong)
        m.learn(Example(target, f"c:{i}", i, i, f, label))
    return m


MODELS = {t: _adversarial(t) for t in ("churn", "propensity")}


@st.composite
def profiles(draw: st.DrawFn) -> ProfileView:
    purchases = draw(st.integers(1, 40))
    aov_cents = draw(st.integers(100, 50_000))
    last_purchase = AS_OF - draw(st.integers(0, 400)) * DAY - draw(st.integers(0, DAY - 1))
    last_seen = draw(st.integers(last_purchase, AS_OF))
    return ProfileView(
        key="c:x",
        first_seen_ts=AS_OF - 2000 * DAY,  # before any last purchase moved back below
        last_seen_ts=last_seen,
        last_purchase_ts=last_purchase,
        events_total=purchases + draw(st.integers(0, 500)),
        purchases_total=purchases,
        revenue_cents=purchases * aov_cents,
        counts={"purchase": purchases},
    )


def _score(target: str, v: ProfileView, as_of: int = AS_OF) -> float:
    return MODELS[target].score(feature_vector(v, as_of))


@pytest.mark.parametrize("target", ["churn", "propensity"])
@settings(max_examples=300, deadline=None)
@given(v=profiles(), days=st.integers(0, 300), back=st.integers(0, 300), k=st.integers(1, 20))
def test_scores_are_monotone_in_recency_and_purchases(
    target: str, v: ProfileView, days: int, back: int, k: int
) -> None:
    sign = 1 if target == "churn" else -1
    assert v.last_purchase_ts is not None
    base = _score(target, v)
    # time passes: more days since the last purchase and since the last visit
    later = _score(target, v, AS_OF + days * DAY)
    # the last purchase further back, the last visit where it was
    older = _score(target, replace(v, last_purchase_ts=v.last_purchase_ts - back * DAY))
    # more purchases at the same average order value
    n = v.purchases_total + k
    richer = _score(
        target, replace(v, purchases_total=n, revenue_cents=n * (v.revenue_cents // (n - k)))
    )
    assert sign * (later - base) >= -1e-12, (base, later)
    assert sign * (older - base) >= -1e-12, (base, older)
    assert sign * (richer - base) <= 1e-12, (base, richer)


def test_the_constraints_bind() -> None:
    """The same examples teach an unconstrained model the wrong slopes; the constrained weights
    keep their signs."""
    for target, m in MODELS.items():
        lr = m.estimator["MonotoneLogisticRegression"]
        free = _adversarial(target, unconstrained=True).estimator["MonotoneLogisticRegression"]
        assert lr.signs and not free.signs
        for name, sign in lr.signs.items():
            assert lr.weights.get(name, 0.0) * sign >= 0.0, (target, name)
        wrong = [n for n, sign in lr.signs.items() if free.weights.get(n, 0.0) * sign < 0]
        assert len(wrong) >= 3, (target, free.weights)

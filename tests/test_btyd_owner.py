"""The buy-till-you-die population fit in the dataflow: the RFM owner fits BG/NBD once per day of
event time on every customer's purchase history and publishes the parameters with the RFM
boundaries; serving turns them into ``scores.p_alive`` and ``scores.expected_purchases_90d``."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from dataflows.records import WriteBoundaries
from dataflows.steps.rfm import RfmLogic
from features.profile import ProfileView
from features.rfm import RfmBoundaries, RfmPoint
from models import btyd
from models.btyd_histories import sample
from serving.scoring import btyd_scores
from tests.conftest import flow_config

DAY = 86_400_000
TODAY = 20_600  # an epoch day
TRUE = btyd.BgNbdParams(r=0.5, alpha=60.0, a=0.9, b=1.6)


def _points(n: int, seed: int) -> list[RfmPoint]:
    """Customers drawn from the model, observed for 60..270 days up to the start of TODAY."""
    rng = np.random.default_rng(seed)
    ages = rng.integers(60, 271, size=n)
    x, t_x, _ = sample(TRUE, n, ages.astype(float), rng)
    out = []
    for xi, txi, age in zip(x, t_x, ages, strict=True):
        first = (TODAY - int(age)) * DAY
        out.append(RfmPoint(first + int(float(txi) * DAY), int(xi) + 1, 10.0 * (int(xi) + 1),
                            first_ts=first))  # fmt: skip
    return out


def _published(outs: list[object]) -> RfmBoundaries:
    got = [o for o in outs if isinstance(o, WriteBoundaries)]
    assert got, outs
    return RfmBoundaries.decode(got[-1].data)


def test_the_owner_fits_once_a_day_and_recovers_the_population() -> None:
    owner = RfmLogic(None, flow_config(rfm_publish_every=10**9))
    points = _points(20_000, seed=3)
    # the newest purchase is on TODAY: a day passed, the population is fitted as of it
    today = RfmPoint(TODAY * DAY + 5, 1, 10.0, first_ts=TODAY * DAY + 5)
    outs, _ = owner.on_batch([(None, p) for p in [*points, today]])
    b = _published(list(outs))
    assert b.btyd is not None and b.btyd_day == TODAY
    fitted = btyd.BgNbdParams(*b.btyd)
    # day resolution costs a little; the population's behaviour is what matters:
    for age in (60.0, 180.0):
        for x, t_x in ((0, 0.0), (2, age / 2), (5, age - 5)):
            truth = btyd.p_alive(TRUE, x, t_x, age)
            assert abs(btyd.p_alive(fitted, x, t_x, age) - truth) < 0.05, (x, t_x, age)
            e_true = btyd.expected_purchases(TRUE, 90.0, x, t_x, age)
            e_fit = btyd.expected_purchases(fitted, 90.0, x, t_x, age)
            assert abs(e_fit - e_true) <= 0.15 * e_true + 0.02, (x, t_x, age)
    # the same day again: no new fit, nothing to publish
    again, _ = owner.on_batch([(None, RfmPoint(TODAY * DAY + 9, 1, 1.0, first_ts=TODAY * DAY))])
    assert list(again) == []
    # a customer who buys again moves between histories (the population keeps its size)
    n = owner.histories.customers
    owner.on_batch([(points[0], RfmPoint(TODAY * DAY + 99, points[0].frequency + 1, 1.0,
                                         first_ts=points[0].first_ts))])  # fmt: skip
    assert owner.histories.customers == n


def test_too_few_customers_publish_no_parameters() -> None:
    owner = RfmLogic(None, flow_config(rfm_publish_every=1))
    outs, _ = owner.on_batch([(None, p) for p in _points(10, seed=1)])
    assert owner.btyd is None and owner.btyd_day is not None  # tried, and declined
    published = [RfmBoundaries.decode(o.data) for o in outs if isinstance(o, WriteBoundaries)]
    assert all(b.btyd is None for b in published)


def test_scores_follow_the_published_parameters() -> None:
    b = RfmBoundaries((1, 2, 3, 4), (1, 2, 3, 4), (1.0, 2.0, 3.0, 4.0), 100, 0,
                      btyd=(TRUE.r, TRUE.alpha, TRUE.a, TRUE.b), btyd_day=TODAY)  # fmt: skip
    as_of = TODAY * DAY

    def buyer(days_ago: int) -> ProfileView:
        last = as_of - days_ago * DAY
        return ProfileView(key="c:1", first_seen_ts=as_of - 200 * DAY, last_seen_ts=last,
                           last_purchase_ts=last, events_total=5, purchases_total=5)  # fmt: skip

    fresh, stale = buyer(1), buyer(150)
    s_fresh, s_stale = btyd_scores(fresh, as_of, b), btyd_scores(stale, as_of, b)
    assert s_fresh["p_alive"]["source"] == "btyd"
    assert s_fresh["p_alive"]["probability"] > s_stale["p_alive"]["probability"]
    ev_fresh = s_fresh["expected_purchases_90d"]["value"]
    assert ev_fresh > s_stale["expected_purchases_90d"]["value"] >= 0.0
    assert orjson.loads(orjson.dumps(s_fresh)) == s_fresh  # JSON-ready


def test_a_failed_fit_keeps_the_last_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.btyd_histories import Histories

    owner = RfmLogic(None, flow_config(rfm_publish_every=10**9))
    owner.on_batch([(None, p) for p in _points(2000, seed=5)])
    before = owner.btyd
    assert before is not None

    def broken(self: Histories, day: int, init: object = None) -> None:
        raise ValueError("the optimiser diverged")

    monkeypatch.setattr(Histories, "fit_at", broken)
    nxt = RfmPoint((TODAY + 1) * DAY, 2, 20.0, first_ts=TODAY * DAY)
    owner.on_batch([(None, nxt)])  # a new day: the fit fails, the flow goes on
    assert owner.btyd == before and owner.btyd_day == TODAY + 1

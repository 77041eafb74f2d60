"""The simulator's latent product structure: only the products changed for a seed, the structure
shows in the events, and the truth for recommendations is honest."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import orjson
import pytest

from nextbest.scenarios import _SIMS
from nextbest.simulator import (
    COMPLEMENTS,
    DAY_MS,
    SimConfig,
    _lines,
    _new_sim,
    _Sim,
    fast_format_ts,
)

#: The fields of an event that the latent product structure must not change (the others are the
#: product's id, category, price, and what derives from them: totals, items, queries, pages).
FIELDS = (
    "ts",
    "type",
    "customer_id",
    "anonymous_id",
    "session_id",
    "quantity",
    "order_id",
    "currency",
    "event_id",
)
#: The truth fields before the latent product structure (``revenue_in_holdout`` changed: prices).
OLD_TRUTH = frozenset(
    {
        "customer_id",
        "segment",
        "churn_hazard",
        "purchase_propensity",
        "churn_probability",
        "churned",
        "churn_day",
        "purchases_in_holdout",
        "active_in_holdout",
        "events_before_holdout",
        "visit_rate",
        "session_conversion",
        "signup_day",
        "preferred_categories",
        "dropout_probability",
        "alive_at_holdout",
    }
)
#: Recorded with the simulator before the latent product structure (commit 14f947a), for
#: ``SimConfig(customers=300, days=40, holdout_days=10, seed=5, scenario=...)``: events written
#: (truth run), sessions, orders, digest of the events' :data:`FIELDS`, digest of the same
#: without ``add_to_cart`` events and event ids, digest of the truth's :data:`OLD_TRUTH` fields.
BEFORE: dict[str, tuple[int, int, int, str, str, str]] = {
    "shop": (14947, 3071, 460, "fdc9d332298d6ad5", "47566f3dd5031f49", "53fc39d55157472c"),
    "purchases": (268, 0, 351, "9f1cebfdf4654b9b", "f7d76cfa5fc5d815", "d774dffd99adbc60"),
    "cohort": (6605, 1583, 137, "fc405ba2fd00c94d", "4240f667a284f71c", "4bc21f44b42f3bd2"),
    "drift": (21189, 4395, 708, "cb62180acaaa4112", "9c95a9ddf0e0c3aa", "8bd92d0a2f18b3d6"),
}


def _digest(x: Any) -> str:
    return hashlib.sha256(orjson.dumps(x)).hexdigest()[:16]


def _run(cfg: SimConfig, sim: _Sim) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = [orjson.loads(line) for line, _, _, _ in _lines(cfg, sim, truth=True)]
    return docs, [orjson.loads(row) for row in sim.truth_rows()]


def _shape(d: dict[str, Any]) -> list[Any]:
    props = d.get("properties") or {}
    return [d.get(f) for f in FIELDS] + [props.get("source"), props.get("method")]


def _old_truth(truth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k in OLD_TRUTH} for row in truth]


def _no_complements(scenario: str) -> type[_Sim]:
    return type("NoComplements", (_SIMS[scenario],), {"complement_cart_p": 0.0})


CFG = SimConfig(customers=300, days=40, holdout_days=10, seed=5)


@pytest.mark.parametrize("scenario", list(BEFORE))
def test_without_complements_only_the_products_changed(scenario: str) -> None:
    """With the complements turned off, everything but the products is as it was."""
    cfg = dataclasses.replace(CFG, scenario=scenario)
    sim = _no_complements(scenario)(cfg)
    docs, truth = _run(cfg, sim)
    n, sessions, orders, events, _, old_truth = BEFORE[scenario]
    assert (len(docs), sim.n_sessions, sim.n_orders) == (n, sessions, orders)
    assert _digest([_shape(d) for d in docs]) == events
    assert _digest(_old_truth(truth)) == old_truth


@pytest.mark.parametrize("scenario", ["shop", "cohort"])
def test_complements_only_add_cart_events(scenario: str) -> None:
    cfg = dataclasses.replace(CFG, scenario=scenario)
    plain, plain_truth = _run(cfg, _no_complements(scenario)(cfg))
    sim = _new_sim(cfg)
    docs, truth = _run(cfg, sim)
    n, sessions, orders, _, no_cart, _ = BEFORE[scenario]
    assert (sim.n_sessions, sim.n_orders) == (sessions, orders)
    rest = [_shape(d)[:-3] + _shape(d)[-2:] for d in docs if d["type"] != "add_to_cart"]
    assert _digest(rest) == no_cart
    key = ("ts", "session_id", "customer_id", "anonymous_id", "quantity")
    before = Counter(tuple(d.get(k) for k in key) for d in plain if d["type"] == "add_to_cart")
    after = Counter(tuple(d.get(k) for k in key) for d in docs if d["type"] == "add_to_cart")
    assert before <= after
    added = after - before
    assert 0.01 * n < sum(added.values()) == len(docs) - n < 0.05 * n
    assert all(k[4] == 1 for k in added)
    # The truth: as before except events_before_holdout, which counts the added events.
    extra = Counter(k[2] for k in added.elements() if k[2] is not None)
    for old, new in zip(_old_truth(plain_truth), _old_truth(truth), strict=True):
        moved = new.pop("events_before_holdout") - old.pop("events_before_holdout")
        assert old == new
        assert moved == extra[new["customer_id"]]


# -- the structure shows in the events ------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> tuple[SimConfig, _Sim, list[dict[str, Any]], list[dict[str, Any]]]:
    """A world without holdout (all events) and its truth with a holdout, same seed."""
    cfg = SimConfig(customers=800, days=60, seed=7)
    sim = _new_sim(cfg)
    docs, _ = _run(cfg, sim)
    held = dataclasses.replace(cfg, holdout_days=14)
    hsim = _new_sim(held)
    _, truth = _run(held, hsim)
    return cfg, sim, docs, truth


def test_sessions_follow_collections_and_complements(world: Any) -> None:
    _, sim, docs, _ = world
    index = {item[0]: i for i, item in enumerate(sim.cat.items)}
    by_session: defaultdict[str, list[int]] = defaultdict(list)
    for d in docs:
        if d["type"] == "product_view":
            by_session[d["session_id"]].append(index[d["product_id"]])
    same = comp = pairs = 0
    for views in by_session.values():
        for a, b in pairwise(views):
            pairs += 1
            same += b in sim.cat.collection[a] and b != a
            comp += b in sim.cat.complements[a]
    assert pairs > 5000
    assert 0.42 < same / pairs < 0.55  # 0.45 jumps, plus fresh picks that land there
    assert 0.08 < comp / pairs < 0.15
    # Collections are of one category and tier, complements of the complementary categories.
    for i in range(0, len(sim.cat.items), 37):
        group = {(sim.cat.cat_of[j], sim.cat.tier[j]) for j in sim.cat.collection[i]}
        assert group == {(sim.cat.cat_of[i], sim.cat.tier[i])}
        assert 6 <= len(sim.cat.collection[i]) <= 19
        cats = COMPLEMENTS[sim.cat.items[i][1]]
        assert 1 <= len(sim.cat.complements[i]) <= 2
        assert all(sim.cat.items[j][1] in cats for j in sim.cat.complements[i])


def test_carts_get_complements_of_their_first_item(world: Any) -> None:
    _, sim, docs, _ = world
    index = {item[0]: i for i, item in enumerate(sim.cat.items)}
    carts: defaultdict[str, list[int]] = defaultdict(list)
    for d in docs:
        if d["type"] == "add_to_cart":
            carts[d["session_id"]].append(index[d["product_id"]])
    with_comp = sum(
        any(j in sim.cat.complements[cart[0]] for j in cart[1:]) for cart in carts.values()
    )
    assert 0.25 < with_comp / len(carts) < 0.4


def test_tiers_and_fashion_shape_the_views(world: Any) -> None:
    cfg, sim, docs, truth = world
    index = {item[0]: i for i, item in enumerate(sim.cat.items)}
    # Prices rise with the tier within a category.
    for ci in range(len(sim.cat.cat_share)):
        top = {t: max(sim.cat.items[i][2] for i in sim.cat.groups[3 * ci + t]) for t in range(3)}
        low = {t: min(sim.cat.items[i][2] for i in sim.cat.groups[3 * ci + t]) for t in range(3)}
        assert top[0] <= low[1] and top[1] <= low[2]
    # A customer's views fall mostly in their favourite tier.
    fav = {
        r["customer_id"]: max(range(3), key=lambda t: r["taste"]["price_tiers"][t]) for r in truth
    }
    hits = Counter(
        sim.cat.tier[index[d["product_id"]]] == fav[d["customer_id"]]
        for d in docs
        if d["type"] == "product_view" and d.get("customer_id") in fav
    )
    assert hits[True] / (hits[True] + hits[False]) > 0.5
    # Fashion moves the popularity of about 30 % of the products; launched products are not
    # viewed before their launch.
    w_early, _ = sim.cat.weights(0)
    w_late, _ = sim.cat.weights(cfg.days - 1)
    n = len(w_early)
    moved = [i for i in range(n) if abs(w_early[i] - w_late[i]) > 0.5 * sim.cat.base[i]]
    assert 0.1 * n < len(moved) < 0.4 * n
    unlaunched = {i for i in range(n) if w_early[i] == 0.0}
    assert len(unlaunched) > 0.03 * n
    day0 = fast_format_ts(cfg.start_ms)[:10]
    seen = {index[d["product_id"]] for d in docs if "product_id" in d and d["ts"][:10] == day0}
    assert len(seen) > 300 and not seen & unlaunched


# -- the truth for recommendations -----------------------------------------------------------------


def test_truth_for_recommendations_is_honest(world: Any) -> None:
    cfg, sim, docs, truth = world
    hold_ms = cfg.start_ms + (cfg.days - 14) * DAY_MS
    hold_ts = fast_format_ts(hold_ms)
    bought: defaultdict[str, list[str]] = defaultdict(list)
    sessions: defaultdict[str, dict[str, list[str]]] = defaultdict(dict)
    before: set[str] = set()
    for d in docs:
        cid = d.get("customer_id")
        if d["ts"] < hold_ts:
            before.add(d.get("session_id") or "")
            continue
        if d["type"] == "purchase":
            for item in d["items"]:
                if item["product_id"] not in bought[cid]:
                    bought[cid].append(item["product_id"])
    # Session owners: the customer of any event of the session (views may precede the login).
    owner_of: dict[str, str] = {}
    for d in docs:
        if d.get("customer_id") and d.get("session_id"):
            owner_of[d["session_id"]] = d["customer_id"]
    for d in docs:
        sid = d.get("session_id")
        if (
            d["type"] == "product_view"
            and d["ts"] >= hold_ts
            and sid in owner_of
            and sid not in before
        ):
            sessions[owner_of[sid]].setdefault(sid, []).append(d["product_id"])
    ids = {item[0] for item in sim.cat.items}
    n_sessions = n_bought = 0
    for row in truth:
        cid = row["customer_id"]
        assert row["products_in_holdout"] == bought.get(cid, [])
        expected = [v for v in sessions.get(cid, {}).values() if len(v) >= 2][:5]
        assert row["holdout_sessions"] == expected, cid
        n_sessions += len(expected)
        n_bought += bool(row["products_in_holdout"])
        taste = row["taste"]
        assert sum(taste["categories"].values()) == pytest.approx(1.0, abs=1e-4)
        assert next(iter(taste["categories"])) in row["preferred_categories"]
        assert sum(taste["price_tiers"]) == pytest.approx(1.0, abs=1e-4)
        oracle = row["oracle_products"]
        assert len(oracle) == len(set(oracle)) == 20 and set(oracle) <= ids
    assert n_sessions > 300 and n_bought > 100


def test_oracle_products_are_the_most_likely_fresh_picks(world: Any) -> None:
    """The oracle's list is the top of the exact fresh-pick distribution at the holdout start."""
    cfg, _, _, _ = world
    held = dataclasses.replace(cfg, holdout_days=14)
    sim = _new_sim(held)
    day = held.days - held.holdout_days
    w, cums = sim.cat.weights(day)
    for p in sim.registered[:20]:
        cat_p = sim.category_taste(p)
        prob = {
            sim.cat.items[i][0]: cat_p[g // 3] * p.tiers[g % 3] * w[i] / cums[g][-1]
            for g, members in enumerate(sim.cat.groups)
            for i in members
        }
        assert sum(prob.values()) == pytest.approx(1.0)
        best = sorted(prob, key=lambda k: -prob[k])[:20]
        assert sim.oracle_products(p) == best

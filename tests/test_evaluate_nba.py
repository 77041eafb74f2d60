"""The closed-loop evaluation of next best action: the truth's documented effects, its
determinism, the policies' bookkeeping, and ``nextbest evaluate-nba`` end to end."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import orjson

from nextbest.commands.evaluate_nba import Ledger
from nextbest.nba_sim import (
    ACTIONS,
    BASELINE_ACTION,
    ShopWorld,
    Traits,
    VisitState,
    annoys,
    draw_traits,
    lift_capture,
    point_rewards,
    truth,
)
from nextbest.simulator import SimConfig, _Sim

ROOT = Path(__file__).resolve().parent.parent

SENSITIVE = Traits(price_sensitivity=0.9, engagement=0.6, loyalty=0.2, affinity=0.75,
                   responsiveness=1.0, session_conversion=0.12)  # fmt: skip
INSENSITIVE = dataclasses.replace(SENSITIVE, price_sensitivity=0.1, loyalty=0.8)
AT_RISK = VisitState(risk=0.8)
ACTIVE = VisitState(risk=0.03)
FRESH_CART = VisitState(risk=0.1, cart_items=2, cart_value=40.0, cart_age_days=0.2)


def test_discount_moves_price_sensitive_customers_at_risk() -> None:
    w = "winback_discount"
    assert truth(w, SENSITIVE, AT_RISK) > 3 * truth(w, INSENSITIVE, ACTIVE)
    # both traits matter, each on its own
    assert truth(w, SENSITIVE, AT_RISK) > truth(w, SENSITIVE, ACTIVE)
    assert truth(w, SENSITIVE, AT_RISK) > truth(w, INSENSITIVE, AT_RISK)
    # the gain from the discount is larger for the sensitive one at risk
    gain_sensitive = truth(w, SENSITIVE, AT_RISK) - truth(w, SENSITIVE, ACTIVE)
    gain_calm = truth(w, INSENSITIVE, AT_RISK) - truth(w, INSENSITIVE, ACTIVE)
    assert gain_sensitive > gain_calm


def test_new_arrivals_move_engaged_focused_browsers() -> None:
    keen = dataclasses.replace(SENSITIVE, engagement=0.95, affinity=1.0)
    mild = dataclasses.replace(SENSITIVE, engagement=0.4, affinity=0.55)
    assert truth("new_arrivals", keen, ACTIVE) > 2 * truth("new_arrivals", mild, ACTIVE)


def test_reminder_moves_fresh_carts_and_annoys_stale_ones() -> None:
    keen = dataclasses.replace(INSENSITIVE, engagement=0.9)
    stale = dataclasses.replace(FRESH_CART, cart_age_days=10.0)
    r = "cart_reminder"
    assert truth(r, keen, FRESH_CART) > 5 * truth(r, keen, stale)
    assert annoys(r, keen, stale) and not annoys(r, keen, FRESH_CART)
    assert truth(r, keen, stale) < truth(BASELINE_ACTION, keen, stale)
    # without a cart there is nothing to remind of
    assert truth(r, keen, ACTIVE) < truth(r, keen, FRESH_CART)


def test_free_shipping_moves_the_price_sensitive_more_than_a_reminder() -> None:
    assert truth("free_shipping", SENSITIVE, FRESH_CART) > truth(
        "cart_reminder", SENSITIVE, FRESH_CART
    )
    assert truth("free_shipping", SENSITIVE, FRESH_CART) > truth(
        "free_shipping", INSENSITIVE, FRESH_CART
    )


def test_annoying_actions_convert_below_doing_nothing() -> None:
    bored = dataclasses.replace(SENSITIVE, engagement=0.1)
    assert annoys("new_arrivals", bored, ACTIVE)
    assert truth("new_arrivals", bored, ACTIVE) < truth(BASELINE_ACTION, bored, ACTIVE)
    assert annoys("loyalty_invitation", SENSITIVE, ACTIVE)
    assert not annoys("loyalty_invitation", INSENSITIVE, ACTIVE)
    assert truth("loyalty_invitation", SENSITIVE, ACTIVE) < truth(
        BASELINE_ACTION, SENSITIVE, ACTIVE
    )
    assert truth("loyalty_invitation", INSENSITIVE, ACTIVE) > truth(
        "loyalty_invitation", SENSITIVE, ACTIVE
    )


def test_unknown_actions_answer_their_prior_and_all_are_probabilities() -> None:
    assert truth("spring_sale", SENSITIVE, AT_RISK, prior=0.07) == 0.07
    rng = random.Random(5)
    for _ in range(2000):
        t = Traits(rng.random(), rng.random(), rng.random(), rng.choice((0.55, 0.75, 1.0)),
                   rng.lognormvariate(0, 0.25), rng.uniform(0.0, 0.6))  # fmt: skip
        s = VisitState(rng.random(), rng.randrange(3), rng.uniform(0, 200), rng.uniform(0, 20))
        for a in ACTIONS:
            assert 0.0 < truth(a, t, s) < 1.0


def test_traits_are_deterministic_and_tied_to_observables() -> None:
    a = draw_traits(3, 11, "occasional", 0.2, 0.1, ["books", "grocery"])
    assert a == draw_traits(3, 11, "occasional", 0.2, 0.1, ["books", "grocery"])
    assert a != draw_traits(4, 11, "occasional", 0.2, 0.1, ["books", "grocery"])
    # cheap categories -> price sensitive, on average over customers
    cheap = [draw_traits(1, i, "loyal", 0.5, 0.1, ["grocery"]).price_sensitivity
             for i in range(300)]  # fmt: skip
    dear = [draw_traits(1, i, "loyal", 0.5, 0.1, ["electronics"]).price_sensitivity
            for i in range(300)]  # fmt: skip
    assert sum(cheap) / 300 > sum(dear) / 300 + 0.4
    assert (
        draw_traits(1, 1, "loyal", 0.7, 0.2, ["x"]).engagement
        > draw_traits(1, 1, "occasional", 0.1, 0.05, ["x"]).engagement
    )


def test_world_keeps_the_simulators_events_and_is_deterministic() -> None:
    cfg = SimConfig(customers=150, days=4, seed=9)
    sim, w1, w2 = _Sim(cfg), ShopWorld(cfg), ShopWorld(cfg)
    for day in range(cfg.days):
        evs = w1.day_events(day)
        assert evs == sim.day_events(day)
        assert w1.walk(evs) == w2.walk(w2.day_events(day))
    assert w1.traits == w2.traits
    assert any(c.items > 0 for c in w1.carts.values())  # carts are folded as the profile does


def test_policy_bookkeeping() -> None:
    rng = random.Random(1)
    for _ in range(500):
        k = rng.randrange(1, 6)
        rewards = [rng.uniform(0, 20) * rng.random() for _ in range(k)]
        served = rng.randrange(k)
        pr = point_rewards(rewards, served)
        assert pr.oracle >= pr.engine >= 0.0
        assert min(rewards) - 1e-12 <= pr.random <= max(rewards) + 1e-12
        assert pr.oracle == max(rewards)
    assert point_rewards([], None).oracle == 0.0
    assert lift_capture(1.0, 1.0, 1.0) is None
    assert lift_capture(0.2, 0.2, 1.0) == 0.0 and lift_capture(1.0, 0.2, 1.0) == 1.0
    led = Ledger()
    led.add(0, 1.0, 0.0, 0.5, 2.0, False)
    led.add(3, 2.0, 4.0, 0.5, 2.0, True)
    s = led.summary(0, 7)
    assert s["decisions"] == 2 and s["engine"] == 1.5 and s["model_share"] == 0.5
    assert s["lift_capture"] == round((1.5 - 0.5) / (2.0 - 0.5), 4)


def test_cli_end_to_end_through_the_real_decider(tmp_path: Path) -> None:
    """A small closed loop: the report's fields, and one logged decision record (from the real
    Decider) per decision point."""
    cmd = [sys.executable, "-m", "nextbest", "evaluate-nba", "--customers", "150", "--days", "14",
           "--seed", "3", "--json"]  # fmt: skip
    env = {"NEXTBEST_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin",
           "NEXTBEST_LOG_LEVEL": "WARNING"}  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=env, timeout=170, check=False)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    r = orjson.loads(out.stdout)
    assert r["customers"] == 150 and r["days"] == 14 and r["seed"] == 3
    assert r["decisions"] > 50
    assert r["records_captured"] == r["decisions"]  # every decision went through the Decider
    assert sum(r["selections"].values()) == r["decisions"]
    assert r["degraded"] == 0
    assert sum(r["served"].values()) == r["outcomes"]["impression"]
    assert 0 < r["outcomes"].get("conversion", 0) < r["outcomes"]["impression"]
    assert [p["from_day"] for p in r["periods"]] == [0, 7]
    last = r["last_half"]
    assert last["from_day"] == 7 and last["decisions"] > 0
    assert last["oracle"] >= last["engine"] >= 0 and last["oracle"] >= last["random"] >= 0
    assert r["lift_capture"] == last["lift_capture"] and r["aim"] == 0.6
    assert isinstance(r["meets_aim"], bool)
    assert set(r["action_models"]) >= {"cart_reminder", "winback_discount"}
    assert r["events"] > 1000

"""How simulated customers respond to next-best-action offers: latent traits and the truth.

The shop simulator (:mod:`nextbest.simulator`) drives visits and purchases from latent traits.
This module adds, per registered customer, the latent **response traits** that decide how the
customer answers each action of the shipped catalogue (``decisions/actions.yaml``), and the
**truth**: P(conversion | traits, state now, action). The closed-loop evaluation
(``nextbest evaluate-nba``, :mod:`nextbest.commands.evaluate_nba`) draws outcomes from it, and
scores the uniform-random and the oracle policies with it.

Response traits (:func:`draw_traits`, deterministic for a seed and a customer): each is tied to
what the simulator already gives the customer, so it shows in the observable profile, which is
what lets an action model learn more than the prior:

``price_sensitivity`` (0-1)
    High for customers whose preferred categories are cheap (the geometric mean of their
    categories' median prices, against 35 EUR), plus noise: visible as a low
    ``avg_order_value`` (and small carts).
``engagement`` (0-1)
    ``1 - exp(-visit_rate x session_conversion / 0.04)``: frequent browsers who buy; visible
    through sessions, product views and purchases in the last 7/30 days.
``loyalty`` (0-1)
    Around 0.8 for the ``loyal`` segment, 0.35 ``occasional``, 0.15 ``churning``; visible
    through purchases in total and recently.
``affinity`` (0.55-1)
    How focused the customer's interests are: 1 preferred category 1.0, 2: 0.75, 3: 0.55.
``responsiveness``
    ``exp(N(0, 0.25))``: a multiplier of every action's conversion that nothing observable
    predicts (no model can learn it; it bounds what any model reaches short of the oracle).

The state at a visit (:class:`VisitState`): the latent churn ``risk`` (``1 - decline`` over the
pre-churn ramp, at least ``min(1, hazard / 0.08)``: the churning segment sits around 0.75,
loyal customers near 0.04; visible through recency and falling activity, i.e. the churn score),
and the cart (items, value, days since the last cart change; the profile's cart follows the same
events).

The truth (:func:`truth`), before ``responsiveness`` and clipped to ``[0.001, 0.9]``:

======================  ===================================================================
``cart_reminder``       ``0.01 + 0.35 exp(-age/1.5) engagement^2 (1 - 0.8 price_sensitivity)``
                        for a cart changed ``age`` days ago (a reminder moves fresh carts of
                        engaged customers who do not wait for a deal, hardly anyone else);
                        **annoys** when the cart is older than 7 days: 0.003
``free_shipping``       ``0.01 + 0.45 price_sensitivity^2 exp(-age/4)`` with a cart
``winback_discount``    ``0.005 + 0.35 price_sensitivity x risk``: the discount moves
                        price-sensitive customers at churn risk, hardly anyone else
``new_arrivals``        ``0.005 + 0.20 engagement x affinity``; **annoys** customers of
                        engagement under 0.25: 0.002
``loyalty_invitation``  ``0.01 + 0.25 loyalty (1 - 0.5 price_sensitivity)``; **annoys**
                        price-sensitive (> 0.65) customers of low loyalty (< 0.3): 0.003
``newsletter_signup``   ``0.01 + 0.05 engagement``
``recommended_products``  ``0.01 + 0.4 session_conversion (0.5 + 0.5 affinity)``: the neutral
                        slot, what doing nothing special earns (:data:`BASELINE_ACTION`)
any other action        its catalogue ``prior`` (an unknown action has no latent effect)
======================  ===================================================================

Every action without a cart in the cart actions is 0.005 (they are not eligible then anyway).
An annoying action converts less than the neutral slot would, and it costs future visits: the
closed loop multiplies the customer's visit rate by :data:`ANNOY_VISIT_FACTOR` per annoying
offer served (never below :data:`ANNOY_VISIT_FLOOR` of the original rate).

Examples
--------
>>> t = Traits(price_sensitivity=0.9, engagement=0.5, loyalty=0.2, affinity=1.0,
...            responsiveness=1.0, session_conversion=0.1)
>>> calm = Traits(price_sensitivity=0.1, engagement=0.5, loyalty=0.8, affinity=1.0,
...               responsiveness=1.0, session_conversion=0.1)
>>> at_risk, active = VisitState(risk=0.8), VisitState(risk=0.05)
>>> w = "winback_discount"
>>> round(truth(w, t, at_risk), 4), round(truth(w, calm, active), 4)
(0.257, 0.0067)
>>> annoys("loyalty_invitation", t, at_risk), truth("loyalty_invitation", t, at_risk) < truth(
...     BASELINE_ACTION, t, at_risk)
(True, True)
>>> truth("spring_sale", t, at_risk, prior=0.07)
0.07
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nextbest.simulator import _CATEGORY_NAMES, CATEGORIES, DAY_MS, SimConfig, _Ev, _Sim, decline

__all__ = [
    "ACTIONS",
    "ANNOY_VISIT_FACTOR",
    "ANNOY_VISIT_FLOOR",
    "BASELINE_ACTION",
    "PointRewards",
    "ShopWorld",
    "Traits",
    "Visit",
    "VisitState",
    "annoys",
    "churn_risk",
    "draw_traits",
    "lift_capture",
    "point_rewards",
    "truth",
]

#: The actions of the shipped catalogue that have a latent effect (others answer their prior).
ACTIONS: Final = (
    "cart_reminder",
    "free_shipping",
    "winback_discount",
    "new_arrivals",
    "loyalty_invitation",
    "newsletter_signup",
    "recommended_products",
)
#: The neutral slot: what a visit converts at when nothing special is offered.
BASELINE_ACTION: Final = "recommended_products"
#: Each annoying offer served multiplies the customer's visit rate by this ...
ANNOY_VISIT_FACTOR: Final = 0.95
#: ... down to this share of the original rate at most.
ANNOY_VISIT_FLOOR: Final = 0.6
#: P(conversion) of a cart action without a cart.
NO_CART_P: Final = 0.005
P_MIN: Final = 0.001
P_MAX: Final = 0.9
#: Segment centres of ``loyalty``.
LOYALTY: Final[dict[str, float]] = {"loyal": 0.8, "occasional": 0.35, "churning": 0.15}
#: Category-focus ``affinity`` by the number of preferred categories.
AFFINITY: Final[dict[int, float]] = {1: 1.0, 2: 0.75, 3: 0.55}
#: The price (EUR) around which price sensitivity is 0.5.
PRICE_CENTRE: Final = 35.0
#: Hazard at which the latent risk of an active customer reaches 1.
RISK_HAZARD: Final = 0.08
#: Days after which a cart is stale: reminding it annoys.
STALE_CART_DAYS: Final = 7.0


@dataclass(frozen=True, slots=True)
class Traits:
    """A customer's latent response traits (see the module docstring);
    ``session_conversion`` is the simulator's P(purchase) per session."""

    price_sensitivity: float
    engagement: float
    loyalty: float
    affinity: float
    responsiveness: float
    session_conversion: float


@dataclass(frozen=True, slots=True)
class VisitState:
    """A customer's state at a visit: latent churn ``risk`` and the cart (``cart_age_days``:
    days since the cart last changed)."""

    risk: float = 0.0
    cart_items: int = 0
    cart_value: float = 0.0
    cart_age_days: float = 0.0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(hi, max(lo, x))


def draw_traits(
    seed: int,
    index: int,
    segment: str,
    visit_rate: float,
    session_conversion: float,
    preferred_categories: Sequence[str],
) -> Traits:
    """The response traits of simulated customer ``index`` (deterministic for ``seed``; an own
    random stream, so the simulator's draws are untouched).

    >>> a = draw_traits(1, 7, "loyal", 0.7, 0.2, ["grocery"])
    >>> a == draw_traits(1, 7, "loyal", 0.7, 0.2, ["grocery"])
    True
    >>> b = draw_traits(1, 7, "loyal", 0.7, 0.2, ["electronics"])
    >>> a.price_sensitivity > b.price_sensitivity, a.engagement > 0.9, a.affinity
    (True, True, 1.0)
    """
    rng = random.Random(f"nextbest-nba-{seed}-{index}")
    prices = [CATEGORIES[c] for c in preferred_categories if c in CATEGORIES] or [PRICE_CENTRE]
    log_price = sum(math.log(p) for p in prices) / len(prices)
    sens = _sigmoid(-2.0 * (log_price - math.log(PRICE_CENTRE)) + rng.gauss(0.0, 0.6))
    engagement = 1.0 - math.exp(-max(0.0, visit_rate * session_conversion) / 0.04)
    loyalty = _clip(LOYALTY.get(segment, 0.3) + rng.gauss(0.0, 0.1))
    affinity = AFFINITY.get(len(preferred_categories), 0.55)
    responsiveness = math.exp(rng.gauss(0.0, 0.25))
    return Traits(sens, engagement, loyalty, affinity, responsiveness, session_conversion)


def churn_risk(day: int, churn_day: int, ramp: int, hazard: float) -> float:
    """Latent churn risk on ``day``: ``1 - decline`` over the pre-churn ramp, at least
    ``min(1, hazard / RISK_HAZARD)``.

    >>> churn_risk(0, 100, 14, 0.003), churn_risk(95, 100, 10, 0.003)
    (0.0375, 0.5)
    """
    return max(1.0 - decline(day, churn_day, ramp), min(1.0, hazard / RISK_HAZARD))


def annoys(action: str, t: Traits, s: VisitState) -> bool:
    """Whether offering ``action`` annoys this customer now (see the module docstring).

    >>> t = Traits(0.5, 0.1, 0.5, 1.0, 1.0, 0.1)
    >>> annoys("new_arrivals", t, VisitState()), annoys("cart_reminder", t, VisitState(
    ...     cart_items=1, cart_value=20.0, cart_age_days=9.0))
    (True, True)
    """
    if action == "cart_reminder":
        return s.cart_items > 0 and s.cart_age_days > STALE_CART_DAYS
    if action == "new_arrivals":
        return t.engagement < 0.25
    if action == "loyalty_invitation":
        return t.price_sensitivity > 0.65 and t.loyalty < 0.3
    return False


def truth(action: str, t: Traits, s: VisitState, prior: float = 0.0) -> float:
    """P(conversion | traits, state, action) (see the module docstring); ``prior``: what an
    action without a latent effect (not in :data:`ACTIONS`) converts at.

    >>> t = Traits(0.5, 0.8, 0.5, 1.0, 1.0, 0.15)
    >>> fresh = VisitState(cart_items=2, cart_value=50.0, cart_age_days=0.1)
    >>> old = VisitState(cart_items=2, cart_value=50.0, cart_age_days=5.0)
    >>> truth("cart_reminder", t, fresh) > truth("cart_reminder", t, old) > 0.01
    True
    >>> truth("free_shipping", t, VisitState())
    0.005
    """
    if action not in ACTIONS:
        return prior
    cart = s.cart_items > 0
    if annoys(action, t, s):
        p = {"cart_reminder": 0.003, "new_arrivals": 0.002, "loyalty_invitation": 0.003}[action]
    elif action == "cart_reminder":
        if not cart:
            return NO_CART_P
        fresh = math.exp(-s.cart_age_days / 1.5)
        p = 0.01 + 0.35 * fresh * t.engagement**2 * (1.0 - 0.8 * t.price_sensitivity)
    elif action == "free_shipping":
        if not cart:
            return NO_CART_P
        p = 0.01 + 0.45 * t.price_sensitivity**2 * math.exp(-s.cart_age_days / 4.0)
    elif action == "winback_discount":
        p = 0.005 + 0.35 * t.price_sensitivity * s.risk
    elif action == "new_arrivals":
        p = 0.005 + 0.20 * t.engagement * t.affinity
    elif action == "loyalty_invitation":
        p = 0.01 + 0.25 * t.loyalty * (1.0 - 0.5 * t.price_sensitivity)
    elif action == "newsletter_signup":
        p = 0.01 + 0.05 * t.engagement
    else:  # recommended_products, the neutral slot
        p = 0.01 + 0.4 * t.session_conversion * (0.5 + 0.5 * t.affinity)
    return _clip(p * t.responsiveness, P_MIN, P_MAX)


@dataclass(frozen=True, slots=True)
class PointRewards:
    """Expected rewards at one decision point: the engine's served action, the uniform-random
    policy (mean over the eligible candidates) and the oracle (the best of them)."""

    engine: float
    random: float
    oracle: float


def point_rewards(rewards: Sequence[float], served: int | None) -> PointRewards:
    """The three policies' expected rewards at a decision point, from each eligible
    candidate's expected reward (``served``: the engine's candidate index; ``None``: it served
    nothing, reward 0). No candidates: every policy earns what the engine served (0).

    >>> point_rewards([0.1, 0.3, 0.2], 2)
    PointRewards(engine=0.2, random=0.20000000000000004, oracle=0.3)
    >>> point_rewards([], None)
    PointRewards(engine=0.0, random=0.0, oracle=0.0)
    """
    engine = rewards[served] if served is not None else 0.0
    if not rewards:
        return PointRewards(engine, engine, engine)
    return PointRewards(engine, sum(rewards) / len(rewards), max(rewards))


def lift_capture(engine: float, random_: float, oracle: float) -> float | None:
    """``(engine - random) / (oracle - random)``: the share of the oracle's lift over random
    that the engine earns (``None`` when the oracle is no better than random).

    >>> lift_capture(0.5, 0.2, 0.6), lift_capture(0.3, 0.3, 0.3)
    (0.75, None)
    """
    gap = oracle - random_
    if gap <= 1e-12:
        return None
    return (engine - random_) / gap


# -- the world: the simulated shop, with carts tracked and visits found --------------------------


@dataclass
class _Cart:
    items: int = 0
    cents: int = 0
    ts: int | None = None


@dataclass(frozen=True, slots=True)
class Visit:
    """A decision point: a registered customer's session starts (``ts``, its first event)."""

    ts: int
    day: int
    index: int
    customer_id: str


@dataclass
class ShopWorld:
    """The shop simulator (:class:`nextbest.simulator._Sim`, the ``shop`` scenario) with the
    customers' response traits, their carts as the profile folds them (``add_to_cart`` and
    ``remove_from_cart`` change it, a ``purchase`` empties it) and the visits to decide at.

    :meth:`day_events` returns the same events as the simulator for the same config, until
    :meth:`annoy` lowers someone's visit rate (the closed loop's world reacting); :meth:`walk`
    finds the visits in them and folds the carts.

    >>> w = ShopWorld(SimConfig(customers=40, days=3, seed=2))
    >>> evs = w.day_events(0)
    >>> from nextbest.simulator import _Sim
    >>> evs == _Sim(SimConfig(customers=40, days=3, seed=2)).day_events(0)
    True
    >>> v = w.walk(evs)
    >>> len(v) > 0 and all(x.customer_id.startswith("c-") for x, _ in v)
    True
    >>> all(0.0 <= s.risk <= 1.0 and s.cart_items >= 0 for _, s in v)
    True
    """

    cfg: SimConfig
    sim: _Sim = field(init=False)
    traits: dict[int, Traits] = field(init=False)
    carts: dict[int, _Cart] = field(init=False, default_factory=dict)
    base_rate: dict[int, float] = field(init=False, default_factory=dict)
    _seen: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        if self.cfg.scenario != "shop":
            raise ValueError("the closed loop simulates the shop scenario only")
        self.sim = _Sim(self.cfg)
        self.traits = {}
        for p in self.sim.people:
            if p.cid is None:
                continue
            cats = [_CATEGORY_NAMES[c] for c in p.pref_cats]
            self.traits[p.idx] = draw_traits(
                self.cfg.seed, p.idx, p.segment, p.rate, p.conversion, cats
            )
            self.base_rate[p.idx] = p.rate

    def day_events(self, day: int) -> list[_Ev]:
        """The simulator's events of ``day`` (ts in the day, sorted)."""
        return self.sim.day_events(day)

    def walk(self, events: Sequence[_Ev]) -> list[tuple[Visit, VisitState]]:
        """Go through ``events`` (in ts order): the sessions of registered customers (after
        their signup) that start in them, each with the customer's state just before its first
        event (a session is found once); the carts are folded on the way."""
        out: list[tuple[Visit, VisitState]] = []
        people, seen, start, traits = self.sim.people, self._seen, self.cfg.start_ms, self.traits
        for ev in events:
            sid, idx = ev[6], ev[2]
            if sid is not None and sid not in seen:
                seen.add(sid)
                p = people[idx]
                day = (ev[0] - start) // DAY_MS
                if p.cid is not None and (p.signup_day is None or day > p.signup_day):
                    out.append((Visit(ev[0], day, idx, p.cid), self.state(idx, ev[0])))
            if idx in traits and ev[3] in ("add_to_cart", "remove_from_cart", "purchase"):
                self._fold(ev)
        return out

    def _fold(self, ev: _Ev) -> None:
        cart = self.carts.setdefault(ev[2], _Cart())
        extra: dict[str, Any] = ev[7] or {}
        if ev[3] == "purchase":
            cart.items, cart.cents = 0, 0
            return
        q = int(extra.get("quantity") or 1)
        cents = round(float(extra.get("price") or 0.0) * 100) * q
        if ev[3] == "add_to_cart":
            cart.items += q
            cart.cents += cents
        else:
            cart.items = max(0, cart.items - q)
            cart.cents = max(0, cart.cents - cents)
        cart.ts = ev[0]

    def state(self, index: int, ts: int) -> VisitState:
        """Customer ``index``'s state at ``ts``, with the cart as folded so far."""
        p = self.sim.people[index]
        day = (ts - self.cfg.start_ms) // DAY_MS
        risk = churn_risk(day, p.churn_day, p.ramp, p.hazard)
        cart = self.carts.get(index)
        if cart is None or cart.items <= 0 or cart.ts is None:
            return VisitState(risk)
        return VisitState(risk, cart.items, cart.cents / 100, max(0.0, (ts - cart.ts) / DAY_MS))

    def annoy(self, index: int) -> None:
        """An annoying offer was served: the customer's visit rate falls (see the module)."""
        p = self.sim.people[index]
        base = self.base_rate.get(index, p.rate)
        p.rate = max(base * ANNOY_VISIT_FLOOR, p.rate * ANNOY_VISIT_FACTOR)

"""Deciding: eligibility, contact policy, propensity, arbitration and exploration (pure).

:func:`decide` takes a catalogue, a channel, the customer's profile document as of the decision
time (the same document the profile API renders, with its scores), its segment memberships,
its model inputs, its contact counters and a random source, and returns a :class:`Decision`:

1. **Eligibility**: the actions offered on the channel whose validity window contains the
   decision time, whose eligibility rule holds and whose contact policy allows them now
   (:func:`decisions.contact.blocked`); the others are listed in ``excluded`` with the reason.
2. **Propensity** P(conversion | profile, action) for each eligible action, from the action's
   model when it is ready, else the action's ``prior`` (:class:`Propensity`, with its source).
3. **Arbitration**: ``priority = propensity x value x weight``; ranked highest first (ties in
   catalogue order).
4. **Exploration** (epsilon-greedy on the served, first, action): with probability ``1 - eps``
   the top-ranked action is served, with probability ``eps`` a uniformly drawn eligible one. The
   probability that action ``a`` is served is exactly ``(1 - eps) * [a is top] + eps / K`` for
   ``K`` eligible actions; every candidate carries it, so any other policy can be evaluated
   from the log (:mod:`decisions.ope`).
5. Nothing eligible: the channel's ``fallback`` action, if any (``selection`` ``"fallback"``,
   probability 1), else nothing (``"none"``).

Examples
--------
>>> import random
>>> from decisions.catalog import parse_catalog
>>> cat = parse_catalog('''
... exploration: {epsilon: 0.2}
... channels: {web: {fallback: signup}}
... actions:
...   - {id: signup, description: newsletter, channels: [web], value: 2, prior: 0.02,
...      eligibility: {feature: purchases_total, op: eq, value: 0}}
...   - {id: reminder, description: cart, channels: [web], prior: 0.1,
...      value: {feature: cart_value}, eligibility: {feature: cart_items, op: ge, value: 1}}
... ''')
>>> doc = {"purchases_total": 0, "cart_items": 2, "cart_value": 50.0}
>>> d = decide(cat, "web", doc, {}, {}, Contacts(), 0, random.Random(2))
>>> [(r.action.id, round(r.priority, 3), r.probability) for r in d.ranked]
[('reminder', 5.0, 0.9), ('signup', 0.04, 0.1)]
>>> d.served.action.id, d.selection, d.served.rules
('reminder', 'greedy', ('cart_items >= 1',))
>>> empty = decide(cat, "web", {"purchases_total": 3, "cart_items": 0}, {}, {}, Contacts(), 0,
...                random.Random(2))
>>> empty.served.action.id, empty.selection, empty.excluded
('signup', 'fallback', (('signup', 'not_eligible'), ('reminder', 'not_eligible')))
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from decisions.catalog import Action, Catalog
from decisions.contact import Contacts, blocked
from features.segments.catalog import MissingFeatureError, read
from features.segments.rules import AllOf, AnyOf, Rule, holds

#: Why an action is not a candidate (a finite set).
EXCLUSIONS: Final = ("not_valid", "not_eligible", "channel_daily_limit", "action_daily_limit",
                     "min_interval", "after_conversion")  # fmt: skip


class Propensity(NamedTuple):
    """P(conversion | profile, action) with where it came from: ``source`` ``model`` (with the
    model's ``version`` and its largest feature ``contributions``) or ``prior``."""

    p: float
    source: str
    version: int | None = None
    contributions: tuple[tuple[str, float], ...] = ()


PropensityFn = Callable[[Action, Mapping[str, float]], Propensity]


def prior_propensity(action: Action, features: Mapping[str, float]) -> Propensity:
    """The documented prior: the action's configured base rate.

    >>> from decisions.catalog import Value
    >>> prior_propensity(Action("a", "d", ("web",), Value(1.0), prior=0.03), {})
    Propensity(p=0.03, source='prior', version=None, contributions=())
    """
    return Propensity(action.prior, "prior")


@dataclass(frozen=True)
class Ranked:
    """An action in the answer, with its arbitration terms, the probability that the policy
    serves it, and the eligibility conditions that held."""

    action: Action
    propensity: Propensity
    value: float
    priority: float
    probability: float
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """The answer: ``ranked`` has the served action first, then the other candidates by
    priority; ``selection`` is ``greedy``, ``exploration``, ``fallback`` or ``none``."""

    channel: str
    ranked: tuple[Ranked, ...]
    served: Ranked | None
    selection: str
    epsilon: float
    excluded: tuple[tuple[str, str], ...]
    #: The candidates (eligible actions) by priority, as logged.
    candidates: tuple[Ranked, ...]


def passed(rule: Rule, value: Callable[[str], Any], member: Callable[[str], bool]) -> list[str]:
    """The conditions of a rule that held, for the explanation (all of an ``all``, the true
    ones of an ``any``, else the rule itself).

    >>> from features.segments.rules import parse_rule
    >>> r = parse_rule({"any": [{"feature": "purchases_total", "op": "ge", "value": 3},
    ...                         {"segment": "loyal"}]}, "eligibility")
    >>> passed(r, {"purchases_total": 1}.get, lambda s: s == "loyal")
    ['in_segment(loyal)']
    """
    if isinstance(rule, AllOf):
        return [t for r in rule.rules for t in passed(r, value, member)]
    if isinstance(rule, AnyOf):
        return [t for r in rule.rules if holds(r, value, member) for t in passed(r, value, member)]
    return [rule.text()]


def render_payload(payload: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """The payload with each string value ``"{feature}"`` replaced by the profile's value (the
    first element of a list; ``None`` when null or unknown).

    >>> render_payload({"category": "{top_categories}", "pct": 10}, {"top_categories": ["shoes"]})
    {'category': 'shoes', 'pct': 10}
    """
    out: dict[str, Any] = {}
    for k, v in payload.items():
        if isinstance(v, str) and len(v) > 2 and v[0] == "{" and v[-1] == "}":
            try:
                x = read(doc, v[1:-1])
            except MissingFeatureError:
                x = None
            out[k] = (x[0] if x else None) if isinstance(x, list) else x
        else:
            out[k] = v
    return out


def _exclusion(
    a: Action,
    cat: Catalog,
    channel: str,
    doc: Mapping[str, Any],
    members: Mapping[str, int],
    contacts: Contacts,
    now_ms: int,
) -> tuple[str | None, tuple[str, ...]]:
    """Why ``a`` is not a candidate (``None``: it is) and the conditions that held."""
    if (a.valid_from is not None and now_ms < a.valid_from) or (
        a.valid_until is not None and now_ms >= a.valid_until
    ):
        return "not_valid", ()
    rules: tuple[str, ...] = ()
    if a.eligibility is not None:

        def value(f: str) -> Any:
            try:
                return read(doc, f)
            except MissingFeatureError:
                return None

        def member(s: str) -> bool:
            return s in members

        if not holds(a.eligibility, value, member):
            return "not_eligible", ()
        rules = tuple(passed(a.eligibility, value, member))
    why = blocked(a.contact, cat.channels[channel], a.id, contacts, now_ms)
    return why, rules


def decide(
    cat: Catalog,
    channel: str,
    doc: Mapping[str, Any],
    members: Mapping[str, int],
    features: Mapping[str, float],
    contacts: Contacts,
    now_ms: int,
    rng: random.Random,
    propensity: PropensityFn = prior_propensity,
) -> Decision:
    """Decide for one profile on one channel (see the module docstring). ``channel`` must be
    one of the catalogue's; ``rng`` is drawn twice at most (seed it per decision)."""
    excluded: list[tuple[str, str]] = []
    scored: list[tuple[float, int, Ranked]] = []
    for i, a in enumerate(cat.for_channel(channel)):
        why, rules = _exclusion(a, cat, channel, doc, members, contacts, now_ms)
        if why is not None:
            excluded.append((a.id, why))
            continue
        prop = propensity(a, features)
        v = a.value.of(doc)
        pr = prop.p * v * a.weight
        scored.append((-pr, i, Ranked(a, prop, v, pr, 0.0, rules)))
    scored.sort(key=lambda t: (t[0], t[1]))
    ranked = [r for _, _, r in scored]
    eps = cat.epsilon
    k = len(ranked)
    if k == 0:
        fb = cat.channels[channel].fallback
        if fb is None:
            return Decision(channel, (), None, "none", eps, tuple(excluded), ())
        a = cat[fb]
        prop = prior_propensity(a, features)
        v = a.value.of(doc)
        r = Ranked(a, prop, v, prop.p * v * a.weight, 1.0, ())
        return Decision(channel, (r,), r, "fallback", eps, tuple(excluded), ())
    probs = [eps / k + (1.0 - eps if j == 0 else 0.0) for j in range(k)]
    cands = tuple(
        Ranked(r.action, r.propensity, r.value, r.priority, p, r.rules)
        for r, p in zip(ranked, probs, strict=True)
    )
    explore = rng.random() < eps
    pick = rng.randrange(k) if explore else 0
    served = cands[pick]
    order = (served, *(c for j, c in enumerate(cands) if j != pick))
    return Decision(
        channel,
        order,
        served,
        "exploration" if pick != 0 else "greedy",
        eps,
        tuple(excluded),
        cands,
    )

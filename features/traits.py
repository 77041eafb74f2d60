"""Traits of a profile: per trait one value, with the source and event time it came from.

An ``identify`` event offers a value for each of its traits. Which offer a profile keeps is
decided per trait by the :class:`TraitPolicy` (``NEXTBEST_TRAITS``, see
:mod:`features.trait_policy`), by comparing the offers' keys

    (source rank, ts, event_id, source, value)

and keeping the greatest: a source listed in the trait's ``priority`` ranks by its place there
(the first listed highest), every other source below all listed ones; among equal ranks the
latest event time wins, then the greatest ``event_id`` (and, for two different offers under one
``event_id``, the greatest source and value). Keeping the maximum is associative, commutative
and idempotent, so the traits do not depend on the order events arrive in, on how the stream
was batched, on duplicates, or on the order profiles are merged in (identity stitching merges
two profiles' traits trait by trait with the same rule). Traits have no lateness: an offer is
applied whenever it comes. A ``null`` value is an offer like any other (the source says there
is no value).

A profile keeps at most :data:`MAX_CUSTOM_PER_PROFILE` custom traits (besides the standard
ones): the first by name (a rule that does not depend on order either).

Examples
--------
>>> p = TraitPolicy({"email": ("crm",)})
>>> t: dict[str, Trait] = {}
>>> offer(t, {"email": "em:1", "loyalty_tier": "gold"}, "crm", 100, "e1", p)
True
>>> offer(t, {"email": "em:2", "loyalty_tier": "silver"}, "web", 200, "e2", p)
True
>>> t["email"].value, t["loyalty_tier"].value      # the CRM owns email; latest wins elsewhere
('em:1', 'silver')
>>> offer(t, {"loyalty_tier": "bronze"}, "web", 150, "e3", p)   # older: ignored
False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from schemas.traits import STANDARD_TRAITS, TraitScalar

#: Most custom traits one profile keeps (the first by name).
MAX_CUSTOM_PER_PROFILE: Final = 64


class Trait(NamedTuple):
    """One trait's value, the source that sent it, and that event's time and id."""

    value: TraitScalar
    source: str
    ts: int
    event_id: str


@dataclass(frozen=True)
class TraitPolicy:
    """Per trait, the sources in priority order (highest first); unlisted traits: latest wins."""

    priority: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: where it was loaded from, and a digest of the file (shown by the CLI)
    source: str = "<default>"

    def rank(self, trait: str, source: str) -> int:
        """Higher wins; 0 for an unlisted source.

        >>> TraitPolicy({"email": ("crm", "shop")}).rank("email", "crm")
        2
        """
        order = self.priority.get(trait)
        if not order or source not in order:
            return 0
        return len(order) - order.index(source)


LATEST_WINS: Final = TraitPolicy()


def _canon(v: TraitScalar) -> tuple[int, str]:
    """A total order over values of any type (the last tie-break only)."""
    return (0, "") if v is None else (1, f"{type(v).__name__}:{v!r}")


def order_key(policy: TraitPolicy, name: str, t: Trait) -> tuple[Any, ...]:
    """What offers of one trait are compared by (the greatest wins)."""
    return (policy.rank(name, t.source), t.ts, t.event_id, t.source, _canon(t.value))


def keep(traits: dict[str, Trait], name: str, t: Trait, policy: TraitPolicy) -> bool:
    """Offer one trait; True when it changed the profile's traits."""
    cur = traits.get(name)
    if cur is not None and order_key(policy, name, cur) >= order_key(policy, name, t):
        return False
    traits[name] = t
    return True


def _bound(traits: dict[str, Trait]) -> None:
    custom = sorted(n for n in traits if n not in STANDARD_TRAITS)
    for n in custom[MAX_CUSTOM_PER_PROFILE:]:
        del traits[n]


def offer(
    traits: dict[str, Trait],
    values: Mapping[str, TraitScalar],
    source: str,
    ts: int,
    event_id: str,
    policy: TraitPolicy,
) -> bool:
    """Offer an ``identify`` event's traits; True when anything changed."""
    changed = False
    for name, v in values.items():
        changed |= keep(traits, name, Trait(v, source, ts, event_id), policy)
    if len(traits) > MAX_CUSTOM_PER_PROFILE:
        _bound(traits)
    return changed


def merge(target: dict[str, Trait], other: Mapping[str, Trait], policy: TraitPolicy) -> bool:
    """Merge another profile's traits into ``target`` (identity stitching), trait by trait.

    >>> a = {"tier": Trait("gold", "crm", 10, "e1")}
    >>> merge(a, {"tier": Trait("silver", "crm", 20, "e2")}, LATEST_WINS), a["tier"].value
    (True, 'silver')
    """
    changed = False
    for name, t in other.items():
        changed |= keep(target, name, t, policy)
    if len(target) > MAX_CUSTOM_PER_PROFILE:
        _bound(target)
    return changed


def newest_ts(traits: Mapping[str, Trait]) -> int:
    """The newest event time among the traits (0 without any)."""
    return max((t.ts for t in traits.values()), default=0)


def trait_values(traits: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
    """Trait name -> value (what segment rules and eligibility read)."""
    return {name: t[0] for name, t in traits.items()}

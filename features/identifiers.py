"""Identifier resolution: which customer an email or phone number (its token) belongs to.

An event carrying a ``customer_id`` and an identifier (top-level ``email`` / ``phone``, or an
``identify``'s ``traits.email`` / ``traits.phone``) *claims* the identifier for that customer.
The identifier is *owned* by the customer of its first claim in event time (ties: the smaller
``event_id``). An event that carries an identifier but neither ``customer_id`` nor
``anonymous_id`` (a newsletter click, a CRM record keyed by email) is resolved by its email (else
its phone): it lands in the owner's profile. Before any claim it is kept in a profile of the
identifier itself (keyed ``a:<token>``, like an anonymous device's), which is handed over whole to
the first customer that claims the identifier, as an anonymous history is on login.

A claim by a second customer is a **conflict**: never merged, the identifier stays with the
owner (the first claim in event time: a claim arriving late but older takes the identifier over
from then on; what was routed before stays where it went). Every claimant's profile records the
conflict (the identifier's token, its owner and every claimant), and
``nextbest_identifier_conflicts_total{kind}`` counts each new claimant. At most
:data:`MAX_CLAIMANTS` customers are remembered per identifier.

The per-identifier state lives in the identity step, keyed ``a:<token>``; :func:`on_event`
returns plain actions like :func:`features.identity.on_event`.

Examples
--------
>>> from schemas import Event
>>> tok = "em:" + "1" * 32
>>> st = IdentifierState(tok)
>>> on_event(st, Event(event_id="n1", type="page_view", ts=1000, email=tok), 60_000)
[('anon_changed',)]
>>> [a[0] for a in on_event(st, Event(event_id="i1", type="identify", ts=2000, customer_id="c1",
...                                    email=tok, traits={}, source="crm"), 60_000)]
['merge', 'link']
>>> on_event(st, Event(event_id="n2", type="page_view", ts=3000, email=tok), 60_000)
[('customer', 'c1')]
>>> on_event(st, Event(event_id="i2", type="identify", ts=4000, customer_id="c2", email=tok,
...                    traits={}, source="web"), 60_000)
[('conflict', 'c1', ('c1', 'c2'), True)]
>>> on_event(st, Event(event_id="i0", type="identify", ts=500, customer_id="c2", email=tok,
...                    traits={}, source="web"), 60_000)     # an older claim arrives late
[('link', 'c2'), ('conflict', 'c2', ('c1', 'c2'), False)]
"""

from __future__ import annotations

from bisect import insort
from typing import Any, Final, NamedTuple

from features.consent import ALL_GRANTED, ConsentDefaults
from features.profile import APPLIED, DUPLICATE, NO_CONSENT, ProfileState, ingest, new_state
from features.traits import LATEST_WINS, TraitPolicy
from schemas.events import Event
from schemas.keys import device_key

#: Most customers remembered as claimants of one identifier (later new claimants are counted
#: as conflicts but not listed).
MAX_CLAIMANTS: Final = 8

Action = tuple[Any, ...]


class Claim(NamedTuple):
    """``customer_id`` claimed the identifier with event ``event_id`` at ``ts``."""

    ts: int
    event_id: str
    customer_id: str


class IdentifierState:
    """One identifier (token): its claims (each customer's first, sorted), and its own profile
    until the first claim."""

    __slots__ = ("anon", "claims", "last_ts", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.claims: list[Claim] = []
        self.anon: ProfileState | None = None
        self.last_ts = 0

    def __getstate__(self) -> tuple[str, list[Claim], ProfileState | None, int]:
        return (self.token, self.claims, self.anon, self.last_ts)

    def __setstate__(self, st: tuple[str, list[Claim], ProfileState | None, int]) -> None:
        self.token, self.claims, self.anon, self.last_ts = st

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentifierState) and self.__getstate__() == other.__getstate__()

    @property
    def owner(self) -> str | None:
        """The customer of the first claim in event time, if any."""
        return self.claims[0].customer_id if self.claims else None

    @property
    def claimants(self) -> tuple[str, ...]:
        """Every customer that claimed it, sorted."""
        return tuple(sorted(c.customer_id for c in self.claims))


def claim(state: IdentifierState, customer_id: str, ts: int, event_id: str) -> list[Action]:
    """Apply one claim; see :func:`on_event` for the actions."""
    new = Claim(ts, event_id, customer_id)
    before = state.owner
    known = next((i for i, c in enumerate(state.claims) if c.customer_id == customer_id), None)
    newcomer = known is None
    if known is not None:
        if state.claims[known] <= new:
            return []
        del state.claims[known]
    elif len(state.claims) >= MAX_CLAIMANTS:
        last = state.claims[-1]
        if new >= last:
            return [("conflict", before, state.claimants, True)]
        del state.claims[-1]  # (an older claim replaces the newest one listed)
    insort(state.claims, new)
    actions: list[Action] = []
    owner = state.owner
    if state.anon is not None:
        actions.append(("merge", owner, state.anon))
        state.anon = None
    if owner != before:
        actions.append(("link", owner))
    if len(state.claims) > 1 and (newcomer or owner != before):
        actions.append(("conflict", owner, state.claimants, newcomer))
    return actions


def on_event(
    state: IdentifierState,
    event: Event,
    lateness_ms: int,
    policy: TraitPolicy = LATEST_WINS,
    consent: ConsentDefaults = ALL_GRANTED,
) -> list[Action]:
    """Apply one event of the identifier; return the actions for the dataflow.

    Actions: ``("customer", customer_id)`` forward the event to its owner's profile;
    ``("merge", customer_id, state)`` hand the identifier's own profile over to its first
    claimant; ``("link", customer_id)`` the owner changed; ``("conflict", owner, claimants,
    new)`` the identifier is contested (tell every claimant; ``new``: a new claimant, count it);
    ``("anon_changed",)``, ``("late",)``, ``("duplicate",)``, ``("no_consent",)`` for the
    identifier's own profile.
    """
    state.last_ts = max(state.last_ts, event.ts)
    if event.customer_id is not None:
        return claim(state, event.customer_id, event.ts, event.event_id)
    owner = state.owner
    if owner is not None:
        return [("customer", owner)]
    if state.anon is None:
        state.anon = new_state(device_key(state.token))
    status = ingest(state.anon, event, lateness_ms, policy, consent)
    if status == APPLIED:
        return [("anon_changed",)]
    if status == NO_CONSENT:
        return [("no_consent",)]
    return [("duplicate",)] if status == DUPLICATE else [("late",)]

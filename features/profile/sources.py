"""What source systems tell a profile: traits (from ``identify`` events), consent (from
``consent`` events) and identifier conflicts (from the identifier step, see
:mod:`features.identifiers`).

>>> from features.profile import new_state, render, view
>>> from features.traits import LATEST_WINS
>>> from schemas import Event
>>> s = new_state("c:42")
>>> apply_identify(s, Event(event_id="i1", type="identify", ts=1767323045000, customer_id="42",
...                         traits={"loyalty_tier": "gold"}, source="crm"), LATEST_WINS)
True
>>> render(view(s), 1767323045000)["traits"]
{'loyalty_tier': {'value': 'gold', 'source': 'crm', 'ts': '2026-01-02T03:04:05Z'}}
"""

from __future__ import annotations

from typing import Final

from features import consent as cs
from features import traits as tr
from features.profile.state import MAX_IDENTITIES, Link, ProfileState
from schemas.events import Event

#: Most contested identifiers one profile lists (the first by token).
MAX_CONFLICTS: Final = 16


def apply_identify(state: ProfileState, event: Event, policy: tr.TraitPolicy) -> bool:
    """Offer an ``identify`` event's traits to the profile; True when they changed. No lateness
    and no duplicate check is needed: the result does not depend on the order (see
    :mod:`features.traits`)."""
    if not event.traits:
        return False
    return tr.offer(state.traits, event.traits, event.source or "", event.ts, event.event_id,
                    policy)  # fmt: skip


def note_conflict(state: ProfileState, token: str, owner: str, claimants: tuple[str, ...]) -> bool:
    """Record that identifier ``token`` is claimed by several customers (``owner`` keeps it);
    True when the record changed. The identifier step sends the newest record to every
    claimant, so the last one a profile gets is complete.

    >>> from features.profile import new_state
    >>> s = new_state("c:2")
    >>> note_conflict(s, "em:x", "1", ("1", "2")), s.conflicts
    (True, {'em:x': ('1', ('1', '2'))})
    >>> note_conflict(s, "em:x", "", ()), s.conflicts     # no claimant: forget it (an erasure)
    (True, {})
    """
    if not claimants:
        return state.conflicts.pop(token, None) is not None
    rec = (owner, tuple(sorted(claimants)))
    if state.conflicts.get(token) == rec:
        return False
    state.conflicts[token] = rec
    if len(state.conflicts) > MAX_CONFLICTS:
        for tok in sorted(state.conflicts)[MAX_CONFLICTS:]:
            del state.conflicts[tok]
    return True


def apply_consent(state: ProfileState, event: Event) -> bool:
    """Take a ``consent`` event's decisions (:mod:`features.consent`); True when they changed
    the consent or its history. Order-independent, like traits."""
    if not event.purposes:
        return False
    return cs.offer(state.consent, state.consent_log, event.purposes, event.source or "",
                    event.ts, event.event_id)  # fmt: skip


def merge_sources(target: ProfileState, other: ProfileState, policy: tr.TraitPolicy) -> None:
    """Identity stitching: ``other``'s traits, conflicts and consent into ``target``."""
    tr.merge(target.traits, other.traits, policy)
    cs.merge(target.consent, target.consent_log, other.consent, other.consent_log)
    for tok, (owner, claimants) in other.conflicts.items():
        if tok not in target.conflicts:
            note_conflict(target, tok, owner, claimants)


def record_link(
    state: ProfileState, anonymous_id: str, customer_id: str, ts: int, event_id: str
) -> None:
    """Record an identity link; it is listed in the profile's ``identities``.

    Idempotent by ``event_id``; the newest :data:`MAX_IDENTITIES` links by ``(ts, event_id)``
    are kept.

    Parameters
    ----------
    state
        The (customer) state to record the link in.
    anonymous_id, customer_id
        The linked ids.
    ts, event_id
        Time (epoch ms) and id of the linking event (``login`` or ``signup``).

    Examples
    --------
    >>> from features.profile import *
    >>> s = new_state("c:42")
    >>> record_link(s, "dev-1", "42", 1767323045000, "e1")
    >>> record_link(s, "dev-1", "42", 1767323045000, "e1")
    >>> render(view(s), 1767323045000)["identities"]
    [{'anonymous_id': 'dev-1', 'customer_id': '42', 'ts': '2026-01-02T03:04:05Z', 'event_id': 'e1'}]
    """
    links = state.identities
    if any(link.event_id == event_id for link in links):
        return
    links.append(Link(anonymous_id, customer_id, ts, event_id))
    links.sort(key=lambda link: (link.ts, link.event_id))
    del links[:-MAX_IDENTITIES]

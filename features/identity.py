"""Identity stitching: which customer an anonymous device's events belong to.

A ``login`` or ``signup`` carrying both ``anonymous_id`` and ``customer_id`` links the device to
the customer. The device's anonymous history before its first link becomes part of that
customer's profile (it is handed over whole, see :func:`features.profile.merge_into`), and later
events that carry only the ``anonymous_id`` belong to the customer the device was linked to *at the
event's time*: a device that later logs in as a second customer is re-linked from that login on,
and nothing of the first customer moves. Anonymous events older than the first link (arriving late)
belong to the first linked customer, like the rest of the pre-login history.

The per-device state is keyed by ``a:<anonymous_id>``; :func:`on_event` returns what to do as plain
actions so the dataflow stays wiring only.

Examples
--------
>>> from schemas import Event
>>> dev = DeviceState("a1")
>>> on_event(dev, Event(event_id="1", type="page_view", ts=1000, anonymous_id="a1"), 60_000)
[('anon_changed',)]
>>> acts = on_event(dev, Event(event_id="2", type="login", ts=2000, anonymous_id="a1",
...                            customer_id="c1"), 60_000)
>>> [a[0] for a in acts], acts[0][1]
(['merge', 'link', 'customer'], 'c1')
>>> on_event(dev, Event(event_id="3", type="page_view", ts=3000, anonymous_id="a1"), 60_000)
[('customer', 'c1')]
>>> on_event(dev, Event(event_id="4", type="login", ts=4000, anonymous_id="a1",
...                     customer_id="c2"), 60_000)
[('link', 'c2'), ('customer', 'c2')]
>>> on_event(dev, Event(event_id="5", type="page_view", ts=3500, anonymous_id="a1"), 60_000)
[('customer', 'c1')]
"""

from __future__ import annotations

from bisect import insort
from typing import Any, NamedTuple

from features.consent import ALL_GRANTED, ConsentDefaults
from features.profile import APPLIED, DUPLICATE, NO_CONSENT, ProfileState, ingest, new_state
from features.traits import LATEST_WINS, TraitPolicy
from schemas.events import LINK_TYPES, Event
from schemas.keys import device_key

#: Most links remembered per device (the oldest are forgotten first, except the first link).
MAX_LINKS = 50

Action = tuple[Any, ...]


class Link(NamedTuple):
    """The device was linked to ``customer_id`` by event ``event_id`` at ``ts``."""

    ts: int
    event_id: str
    customer_id: str


class DeviceState:
    """One anonymous device: its links, and its anonymous profile until the first link."""

    __slots__ = ("anon", "anonymous_id", "last_ts", "links")

    def __init__(self, anonymous_id: str) -> None:
        self.anonymous_id = anonymous_id
        self.links: list[Link] = []
        self.anon: ProfileState | None = None
        self.last_ts = 0

    def __getstate__(self) -> tuple[str, list[Link], ProfileState | None, int]:
        return (self.anonymous_id, self.links, self.anon, self.last_ts)

    def __setstate__(self, st: tuple[str, list[Link], ProfileState | None, int]) -> None:
        self.anonymous_id, self.links, self.anon, self.last_ts = st

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceState) and self.__getstate__() == other.__getstate__()

    @property
    def current_customer(self) -> str | None:
        """The customer the device is linked to now (its latest link), if any."""
        return self.links[-1].customer_id if self.links else None


def is_link_event(event: Event) -> bool:
    """A ``login``/``signup`` carrying both ids."""
    return (
        event.type in LINK_TYPES
        and event.customer_id is not None
        and event.anonymous_id is not None
    )


def needs_identity(event: Event) -> bool:
    """Events the identity step handles: anonymous-only events and link events."""
    return event.anonymous_id is not None and (event.customer_id is None or is_link_event(event))


def resolve(links: list[Link], ts: int, event_id: str) -> str:
    """The customer a device's event belongs to (``links`` sorted and non-empty).

    >>> links = [Link(10, "a", "c1"), Link(20, "b", "c2")]
    >>> resolve(links, 5, "x"), resolve(links, 15, "x"), resolve(links, 25, "x")
    ('c1', 'c1', 'c2')
    """
    owner = links[0].customer_id
    for link in links:
        if (link.ts, link.event_id) <= (ts, event_id):
            owner = link.customer_id
        else:
            break
    return owner


def on_event(
    state: DeviceState,
    event: Event,
    lateness_ms: int,
    policy: TraitPolicy = LATEST_WINS,
    consent: ConsentDefaults = ALL_GRANTED,
) -> list[Action]:
    """Apply one event of the device; return the actions for the dataflow.

    Actions: ``("customer", customer_id)`` forward the event to that customer's profile;
    ``("merge", customer_id, anon_state)`` hand the anonymous history over; ``("link",
    customer_id)`` the device's current link changed; ``("anon_changed",)`` the anonymous profile
    changed; ``("late",)`` / ``("duplicate",)`` for the anonymous profile's own lateness and dedup;
    ``("no_consent",)``: not recorded (its analytics consent is withdrawn).
    """
    state.last_ts = max(state.last_ts, event.ts)
    if is_link_event(event):
        assert event.customer_id is not None
        actions: list[Action] = []
        if all(link.event_id != event.event_id for link in state.links):
            before = state.current_customer
            insort(state.links, Link(event.ts, event.event_id, event.customer_id))
            if len(state.links) > MAX_LINKS:
                del state.links[1]
            if state.anon is not None:
                actions.append(("merge", state.links[0].customer_id, state.anon))
                state.anon = None
            if state.current_customer != before:
                actions.append(("link", state.current_customer))
        actions.append(("customer", event.customer_id))
        return actions
    if state.links:
        return [("customer", resolve(state.links, event.ts, event.event_id))]
    if state.anon is None:
        state.anon = new_state(device_key(state.anonymous_id))
    status = ingest(state.anon, event, lateness_ms, policy, consent)
    if status == APPLIED:
        return [("anon_changed",)]
    if status == NO_CONSENT:
        return [("no_consent",)]
    return [("duplicate",)] if status == DUPLICATE else [("late",)]

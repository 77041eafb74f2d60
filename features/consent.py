"""A profile's consent: per purpose the newest decision, and the history of decisions.

Each purpose's current value is the one of its newest ``consent`` event by ``(ts, event_id)``, so
the result does not depend on the order events arrive in, nor on how identities are stitched
(:func:`merge` takes the newest per purpose); the history keeps the newest
:data:`MAX_HISTORY` decisions, in time order. A purpose never decided takes its default
(:class:`schemas.consent.ConsentDefaults`).

What consent changes (README, "Privacy"): without ``analytics`` the profile records no more
events (they are counted, ``nextbest_events_dropped_total{reason="no_consent"}``, and dropped);
without ``personalization`` decisions and recommendations use only non-personal logic and say
so; without ``marketing`` the customer is in no segment (an exit is published when it is
withdrawn) and so in no targeted list.

Examples
--------
>>> c, h = {}, []
>>> offer(c, h, {"marketing": "withdrawn"}, "web", 2_000, "e2")
True
>>> offer(c, h, {"marketing": "granted"}, "crm", 1_000, "e1")   # older: history only
True
>>> allows(c, "marketing", ALL_GRANTED), allows(c, "analytics", ALL_GRANTED)
(False, True)
>>> [(p, g.granted) for p, g in h]
[('marketing', True), ('marketing', False)]
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from schemas.consent import ALL_GRANTED as ALL_GRANTED
from schemas.consent import PURPOSES as PURPOSES
from schemas.consent import ConsentDefaults as ConsentDefaults

#: Consent decisions a profile remembers (the newest).
MAX_HISTORY: Final = 20


class Grant(NamedTuple):
    """One decision on a purpose: when (``ts``, ``event_id``), granted or not, and who said it."""

    ts: int
    event_id: str
    granted: bool
    source: str


Consent = dict[str, Grant]
History = list[tuple[str, Grant]]


def _order(entry: tuple[str, Grant]) -> tuple[int, str, str]:
    return entry[1].ts, entry[1].event_id, entry[0]


def offer(
    consent: Consent,
    history: History,
    purposes: Mapping[str, str],
    source: str,
    ts: int,
    event_id: str,
) -> bool:
    """Take a ``consent`` event's decisions; True when the consent or its history changed."""
    changed = False
    for purpose in sorted(purposes):
        g = Grant(ts, event_id, purposes[purpose] == "granted", source)
        changed |= _remember(history, (purpose, g))
        cur = consent.get(purpose)
        if cur is None or (g.ts, g.event_id) > (cur.ts, cur.event_id):
            consent[purpose] = g
            changed = True
    return changed


def _remember(history: History, entry: tuple[str, Grant]) -> bool:
    if entry in history:
        return False
    insort(history, entry, key=_order)
    if len(history) > MAX_HISTORY:
        del history[: len(history) - MAX_HISTORY]
    return entry in history


def merge(consent: Consent, history: History, other: Consent, other_history: History) -> None:
    """Identity stitching: the newest decision per purpose, the union of the histories.

    >>> a, ha, b, hb = {}, [], {}, []
    >>> _ = offer(a, ha, {"analytics": "withdrawn"}, "web", 5, "x")
    >>> _ = offer(b, hb, {"analytics": "granted"}, "crm", 9, "y")
    >>> merge(a, ha, b, hb); a["analytics"].granted, len(ha)
    (True, 2)
    """
    for purpose, g in other.items():
        cur = consent.get(purpose)
        if cur is None or (g.ts, g.event_id) > (cur.ts, cur.event_id):
            consent[purpose] = g
    for entry in other_history:
        _remember(history, entry)


def allows(consent: Mapping[str, Any], purpose: str, defaults: ConsentDefaults) -> bool:
    """Whether a purpose is granted: its newest decision, else its default. ``consent`` maps a
    purpose to a :class:`Grant` or to a stored ``(granted, source, ts)``."""
    g = consent.get(purpose)
    if g is None:
        return defaults.of(purpose)
    return bool(g.granted if isinstance(g, Grant) else g[0])


def document(
    consent: Mapping[str, tuple[bool, str, int]],
    history: list[tuple[str, bool, str, int]],
    defaults: ConsentDefaults,
    format_ts: Any,
) -> dict[str, Any]:
    """The profile document's ``consent``: each purpose's value (``source: "default"`` when
    never decided) and the history, oldest first.

    >>> from schemas.events import format_ts
    >>> d = document({"marketing": (False, "web", 0)}, [("marketing", False, "web", 0)],
    ...              ALL_GRANTED, format_ts)
    >>> d["marketing"], d["analytics"]
    ({'granted': False, 'source': 'web', 'ts': '1970-01-01T00:00:00Z'}, {'granted': True, 'source': 'default', 'ts': None})
    """  # noqa: E501
    out: dict[str, Any] = {}
    for purpose in PURPOSES:
        got = consent.get(purpose)
        if got is None:
            out[purpose] = {"granted": defaults.of(purpose), "source": "default", "ts": None}
        else:
            out[purpose] = {"granted": got[0], "source": got[1], "ts": format_ts(got[2])}
    out["history"] = [
        {"purpose": p, "granted": g, "source": src, "ts": format_ts(ts)}
        for p, g, src, ts in history
    ]
    return out

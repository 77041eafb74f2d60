"""Per-customer profile state: a pure ``apply(state, event) -> state`` and its projections.

The state is the authoritative copy kept by the dataflow (and in Bytewax recovery snapshots); Redis
holds a projection of it written with absolute values (:func:`to_fields`), from which serving and
the CLI rebuild the same state (:func:`from_fields`) and render it as of a time (:func:`render`).

Examples
--------
>>> from schemas import decode_event
>>> e1 = decode_event(b'{"event_id":"1","type":"page_view","ts":1767323045000,"customer_id":"c1"}')
>>> e2 = decode_event(b'{"event_id":"2","type":"purchase","ts":1767323105000,"customer_id":"c1",'
...                   b'"order_id":"o1","total":20.5}')
>>> s = apply(apply(None, e1), e2)
>>> s.counts, s.purchases_total, s.revenue_total
({'page_view': 1, 'purchase': 1}, 1, 20.5)
>>> from_fields(to_fields(s)) == s
True
>>> render(s, as_of=1767323105000)["last_seen_ts"]
'2026-01-02T03:05:05Z'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from schemas.events import Event, format_ts

#: Version of the Redis projection layout; bumped when the field layout changes.
LAYOUT_VERSION: Final = "1"
_COUNT_PREFIX: Final = "n:"


@dataclass(slots=True)
class ProfileState:
    """One customer's (or one anonymous visitor's) state.

    ``key`` is ``c:<customer_id>`` or ``a:<anonymous_id>``; timestamps are epoch milliseconds.
    """

    key: str
    counts: dict[str, int] = field(default_factory=dict)
    events_total: int = 0
    first_seen_ts: int = 0
    last_seen_ts: int = 0
    purchases_total: int = 0
    revenue_total: float = 0.0

    @property
    def kind(self) -> str:
        """``customer`` or ``anonymous``."""
        return "customer" if self.key.startswith("c:") else "anonymous"

    @property
    def id(self) -> str:
        """The customer id or anonymous id without its prefix."""
        return self.key[2:]


def apply(state: ProfileState | None, event: Event) -> ProfileState:
    """Return the state after ``event`` (the input state is updated in place and returned).

    A refund subtracts its ``total`` from ``revenue_total``; a purchase adds it.

    >>> from schemas import Event
    >>> s = apply(None, Event(event_id="r", type="refund", ts=1767323045000, customer_id="c",
    ...                       total=5.0))
    >>> s.revenue_total, s.purchases_total, s.first_seen_ts
    (-5.0, 0, 1767323045000)
    """
    if state is None:
        state = ProfileState(key=event.key, first_seen_ts=event.ts, last_seen_ts=event.ts)
    state.counts[event.type] = state.counts.get(event.type, 0) + 1
    state.events_total += 1
    if event.ts < state.first_seen_ts:
        state.first_seen_ts = event.ts
    if event.ts > state.last_seen_ts:
        state.last_seen_ts = event.ts
    if event.type == "purchase":
        state.purchases_total += 1
        state.revenue_total = round(state.revenue_total + (event.total or 0.0), 2)
    elif event.type == "refund":
        state.revenue_total = round(state.revenue_total - (event.total or 0.0), 2)
    return state


def to_fields(state: ProfileState) -> dict[str, str]:
    """The Redis hash projection: absolute values only, so rewriting it is idempotent."""
    fields = {
        "v": LAYOUT_VERSION,
        "key": state.key,
        "events_total": str(state.events_total),
        "first_seen_ts": str(state.first_seen_ts),
        "last_seen_ts": str(state.last_seen_ts),
        "purchases_total": str(state.purchases_total),
        "revenue_total": repr(state.revenue_total),
    }
    for name, n in state.counts.items():
        fields[_COUNT_PREFIX + name] = str(n)
    return fields


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def from_fields(raw: dict[Any, Any]) -> ProfileState:
    """Rebuild the state from :func:`to_fields` output (str or bytes keys and values)."""
    f = {_s(k): _s(v) for k, v in raw.items()}
    counts = {k[len(_COUNT_PREFIX) :]: int(v) for k, v in f.items() if k.startswith(_COUNT_PREFIX)}
    return ProfileState(
        key=f["key"],
        counts=counts,
        events_total=int(f.get("events_total", "0")),
        first_seen_ts=int(f.get("first_seen_ts", "0")),
        last_seen_ts=int(f.get("last_seen_ts", "0")),
        purchases_total=int(f.get("purchases_total", "0")),
        revenue_total=float(f.get("revenue_total", "0")),
    )


def render(state: ProfileState, as_of: int) -> dict[str, Any]:
    """The public profile document as of ``as_of`` (epoch ms): what CLI and HTTP return.

    Events later than ``as_of`` are already folded into the stored totals; windowed values that
    depend on ``as_of`` arrive with the rolling-window features.
    """
    doc: dict[str, Any] = {
        "customer_id" if state.kind == "customer" else "anonymous_id": state.id,
        "kind": state.kind,
        "as_of": format_ts(as_of),
        "first_seen_ts": format_ts(state.first_seen_ts),
        "last_seen_ts": format_ts(state.last_seen_ts),
        "events_total": state.events_total,
        "purchases_total": state.purchases_total,
        "revenue_total": state.revenue_total,
        "counts": dict(sorted(state.counts.items())),
    }
    return doc

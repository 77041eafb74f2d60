"""The public profile document as of a time, computed from a view; the model inputs' source over
a state (:class:`StateSource`). Every feature is an entry of :mod:`features.registry`."""

from __future__ import annotations

from itertools import chain
from typing import Any, Final

from features.consent import ALL_GRANTED, ConsentDefaults
from features.consent import document as consent_document
from features.profile.codec import view
from features.profile.fold import _LIVE_SPECS
from features.profile.state import ProfileState, ProfileView
from features.registry import FEATURES, SERIES, SESSION_SERIES, Feature
from features.windows import KEY_MASK, KEY_SHIFT
from schemas.events import format_ts
from schemas.identifiers import kind_of

_RENDER: Final = tuple((f.name, f.value) for f in FEATURES)


def render(v: ProfileView, as_of: int, consent: ConsentDefaults = ALL_GRANTED) -> dict[str, Any]:
    """The public JSON profile document as of a time: a pure function of its inputs.

    Parameters
    ----------
    v
        A view (:func:`view`, or :func:`from_fields` of the Redis hash).
    as_of
        Epoch milliseconds.

    Returns
    -------
    dict[str, Any]
        ``customer_id`` (or ``anonymous_id``), ``kind``, ``as_of`` and every feature of
        :data:`features.registry.FEATURES`, in its order (see the README), then ``traits``
        (name -> ``{value, source, ts}``), ``identifier_conflicts`` and ``consent`` (each
        purpose's value, ``consent`` giving the undecided ones, and the history).
        Windowed values follow the window contract for ``as_of >= last_seen_ts``; for earlier
        ``as_of`` they are approximate. Lifetime values include every applied event.

    Examples
    --------
    >>> v = ProfileView(key="a:dev", first_seen_ts=0, last_seen_ts=0, events_total=1,
    ...                 counts={"page_view": 1}, buckets={"pv1h": {0: 1}})
    >>> doc = render(v, as_of=3_600_000)
    >>> doc["anonymous_id"], doc["kind"], doc["as_of"], doc["page_views_1h"], doc["tenure_days"]
    ('dev', 'anonymous', '1970-01-01T01:00:00Z', 1, 0.042)
    >>> render(v, as_of=3_750_000)["page_views_1h"]      # bucket [0, 150 s) is out of the hour
    0
    """
    doc: dict[str, Any] = {
        "customer_id" if v.kind == "customer" else "anonymous_id": v.id,
        "kind": v.kind,
        "as_of": format_ts(as_of),
    }
    for name, value in _RENDER:
        doc[name] = value(v, as_of)
    doc["traits"] = {
        name: {"value": value, "source": source, "ts": format_ts(ts)}
        for name, (value, source, ts) in v.traits.items()
    }
    doc["identifier_conflicts"] = [
        {"identifier": tok, "kind": kind_of(tok), "owner": owner, "claimed_by": list(claimants)}
        for tok, (owner, claimants) in v.conflicts.items()
    ]
    doc["consent"] = consent_document(v.consent, v.consent_log, consent, format_ts)
    return doc


def render_state(state: ProfileState, as_of: int) -> dict[str, Any]:
    """``render(view(state), as_of)``: the document straight from a state (tests, replay)."""
    return render(view(state), as_of)


def window_values(state: ProfileState, as_of: int) -> list[int]:
    """Every series' window value as of a time, by series index, straight from the state.

    Equal to ``window_sum(view(state).buckets.get(s.name), s, as_of)`` for each series ``s``
    (counts, cents and sessions), without building the view: one pass over the live buckets.
    The training snapshots use it (see :func:`models.features.state_features`).

    >>> from features.profile import *
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="page_view", ts=86_400_000, customer_id="42",
    ...                     session_id="s1"), 600_000)
    >>> v = window_values(s, 86_400_000 + 7_200_000)
    >>> from features.registry import SERIES_BY_NAME
    >>> [v[SERIES_BY_NAME[n].idx] for n in ("pv1h", "pv24h", "se7d")]
    [0, 1, 1]
    """
    a = state.current
    sums = [0] * len(SERIES)
    newest = a.last
    if newest is None:
        return sums
    ranges = [(max((newest + lw) // g, (as_of + lw) // g), as_of // g) for lw, g in _LIVE_SPECS]
    shift, mask = KEY_SHIFT, KEY_MASK
    for key, val in a.buckets.items():
        idx = key >> shift
        lo, hi = ranges[idx]
        if lo <= key & mask <= hi:
            sums[idx] += val
    if a.sids or a.runs:
        for s in SESSION_SERIES:
            g = s.gran
            lo, hi = ranges[s.idx]
            firsts = chain(a.sids.values(), a.runs)
            sums[s.idx] = sum(1 for first in firsts if lo <= first // g <= hi)
    return sums


class StateSource:
    """A state as of a time, as model inputs read it (:class:`features.registry.FeatureSource`):
    window sums in one pass over the buckets (:func:`window_values`), scalars from the current
    aggregate; no view, no document.

    >>> from features.profile import *
    >>> from features.registry import BY_NAME
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="purchase", ts=86_400_000, customer_id="42",
    ...                     total=12.5), 600_000)
    >>> src = StateSource(s, 2 * 86_400_000)
    >>> [src.number(BY_NAME[n]) for n in ("purchases_7d", "revenue_7d", "last_purchase_ts")]
    [1, 12.5, 86400000]
    """

    __slots__ = ("as_of", "sums", "totals")

    def __init__(self, state: ProfileState, as_of: int) -> None:
        self.totals = state.current
        self.as_of = as_of
        self.sums = window_values(state, as_of)

    def number(self, f: Feature, /) -> float | None:
        """The feature's value as a number (windowed: counts, or currency units)."""
        read = f.number
        if read is not None:
            return read(self.totals, self.as_of)
        s, m = f.series, f.minus
        if s is None:
            raise ValueError(f"{f.name}: neither windowed nor a number")
        if m is None:
            return self.sums[s.idx]
        return (self.sums[s.idx] - self.sums[m.idx]) / 100

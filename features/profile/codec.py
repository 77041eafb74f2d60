"""The view of a state and its Redis projection (``to_fields`` / ``from_fields``, layout
version 2)."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any, Final

import msgspec

from features import interest as _interest
from features.profile.fold import (
    _LIVE_SPECS,
    _NAMES,
)
from features.profile.state import (
    _CODE_TYPES,
    LAYOUT_VERSION,
    MAX_FIELD_BYTES,
    TYPE_CODES,
    LayoutError,
    Link,
    ProfileState,
    ProfileView,
)
from features.registry import SERIES_BY_NAME, SESSION_SERIES
from features.windows import KEY_MASK, KEY_SHIFT, decode_buckets, encode_buckets


def _sig(x: float) -> float:
    return float(f"{x:.9g}")


def view(state: ProfileState, series: frozenset[str] | None = None) -> ProfileView:
    """The state's current view: what :func:`to_fields` stores and :func:`render` needs.

    Parameters
    ----------
    state
        A profile state.
    series
        Only these series' buckets, and no interests (a partial view for readers that need no
        more, e.g. segment rules); default: the whole view.

    Returns
    -------
    ProfileView
        Equal to ``from_fields(to_fields(state))``: the live, non-zero buckets of every series
        (sessions included), lifetime values, cart, interests as of the newest event (9
        significant digits) and identity links.

    Examples
    --------
    >>> from features.profile import *
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="product_view", ts=86_400_000, customer_id="42",
    ...                     category="books"), 600_000)
    >>> v = view(s)
    >>> v.buckets["vw1h"], v.interests, v.last_seen_ts
    ({576: 1}, {'books': 1.0}, 86400000)
    >>> part = view(s, frozenset({"vw1h"}))
    >>> part.buckets, part.interests
    ({'vw1h': {576: 1}}, {})
    """
    a = state.current
    newest = a.last
    buckets: dict[str, dict[int, int]] = {}
    interests: dict[str, float] = {}
    if newest is not None:
        b = a.buckets
        cur_idx = -1
        low = 0
        d: dict[int, int] | None = None
        keys = b if series is None else (k for k in b if _NAMES[k >> KEY_SHIFT] in series)
        for key in sorted(keys):  # grouped by series, then by bucket
            idx = key >> KEY_SHIFT
            if idx != cur_idx:
                cur_idx = idx
                w, g = _LIVE_SPECS[idx]
                low = (newest + w) // g
                d = None
            k = key & KEY_MASK
            if k >= low:
                if d is None:
                    d = buckets[_NAMES[idx]] = {}
                d[k] = b[key]
        if a.sids or a.runs:
            for s in SESSION_SERIES:
                if series is not None and s.name not in series:
                    continue
                g = s.gran
                low = s.live_from(newest)
                sd: dict[int, int] = {}
                for first in chain(a.sids.values(), a.runs):
                    k = first // g
                    if k >= low:
                        sd[k] = sd.get(k, 0) + 1
                if sd:
                    buckets[s.name] = sd
        if series is None:
            f = 2.0 ** ((a.iref - newest) / _interest.HALF_LIFE_MS)
            interests = {c: _sig(x * f) for c, x in a.interest.items()}
    return ProfileView(
        key=state.key,
        first_seen_ts=a.first,
        last_seen_ts=newest,
        last_purchase_ts=a.last_purchase,
        events_total=a.events,
        counts=dict(a.counts),
        purchases_total=a.purchases,
        revenue_cents=a.revenue,
        cart_items=a.cart_items,
        cart_cents=a.cart_cents,
        interests=interests,
        buckets=buckets,
        identities=list(state.identities),
        recent=[(ts, k, p, c) for ts, _e, k, p, c in a.recent],
        cart=dict(sorted(a.cart.items())),
        bought=dict(sorted(a.bought.items())),
        traits={n: (t.value, t.source, t.ts) for n, t in sorted(state.traits.items())},
        conflicts=dict(sorted(state.conflicts.items())),
        consent={p: (g.granted, g.source, g.ts) for p, g in sorted(state.consent.items())},
        consent_log=[(p, g.granted, g.source, g.ts) for p, g in state.consent_log],
    )


def _put(fields: dict[str, str], name: str, value: str) -> None:
    """Set a field, spreading a value longer than 64 bytes over ``name``, ``name/1``, ..."""
    if len(value) <= MAX_FIELD_BYTES and (value.isascii() or len(value.encode()) <= 64):
        fields[name] = value
        return
    if value.isascii():  # one byte per character: plain slices
        fields[name] = value[:MAX_FIELD_BYTES]
        for i, start in enumerate(range(MAX_FIELD_BYTES, len(value), MAX_FIELD_BYTES), 1):
            fields[f"{name}/{i}"] = value[start : start + MAX_FIELD_BYTES]
        return
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for ch in value:
        n = len(ch.encode())
        if size + n > MAX_FIELD_BYTES:
            chunks.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += n
    chunks.append("".join(cur))
    fields[name] = chunks[0]
    for i, chunk in enumerate(chunks[1:], 1):
        fields[f"{name}/{i}"] = chunk


_link_encoder: Final = msgspec.json.Encoder()
_link_decoder: Final = msgspec.json.Decoder(tuple[str, str, int, str])
_recent_decoder: Final = msgspec.json.Decoder(list[tuple[int, str, str, str]])
_counts_decoder: Final = msgspec.json.Decoder(dict[str, int])
_traits_decoder: Final = msgspec.json.Decoder(dict[str, tuple[Any, str, int]])
_conflicts_decoder: Final = msgspec.json.Decoder(dict[str, tuple[str, tuple[str, ...]]])
_consent_decoder: Final = msgspec.json.Decoder(dict[str, tuple[bool, str, int]])
_consent_log_decoder: Final = msgspec.json.Decoder(list[tuple[str, bool, str, int]])


def fields_of(v: ProfileView) -> dict[str, str]:
    """The Redis hash of a view (:func:`to_fields` is ``fields_of(view(state))``)."""
    f: dict[str, str] = {"v": LAYOUT_VERSION}
    _put(f, "key", v.key)
    if v.first_seen_ts is not None:
        f["ft"] = str(v.first_seen_ts)
    if v.last_seen_ts is not None:
        f["lt"] = str(v.last_seen_ts)
    if v.last_purchase_ts is not None:
        f["lp"] = str(v.last_purchase_ts)
    f["ne"] = str(v.events_total)
    if v.purchases_total:
        f["np"] = str(v.purchases_total)
    if v.revenue_cents:
        f["rv"] = str(v.revenue_cents)
    for t, n in v.counts.items():
        f["n:" + TYPE_CODES.get(t, t)] = str(n)
    if v.cart_items:
        f["ci"] = str(v.cart_items)
    if v.cart_cents:
        f["cv"] = str(v.cart_cents)
    for c, x in v.interests.items():
        f["i:" + c] = repr(x)
    if v.buckets:
        last = v.last_seen_ts or 0
        for name, d in v.buckets.items():
            _put(f, name, encode_buckets(d, SERIES_BY_NAME[name].live_from(last)))
    if v.recent:
        _put(f, "rp", _link_encoder.encode(v.recent).decode())
    if v.cart:
        _put(f, "ck", _link_encoder.encode(v.cart).decode())
    if v.bought:
        _put(f, "bo", _link_encoder.encode(v.bought).decode())
    if v.traits:
        _put(f, "tr", _link_encoder.encode(v.traits).decode())
    if v.conflicts:
        _put(f, "cf", _link_encoder.encode(v.conflicts).decode())
    if v.consent:
        _put(f, "cs", _link_encoder.encode(v.consent).decode())
        _put(f, "ch", _link_encoder.encode(v.consent_log).decode())
    own = v.id if v.kind == "customer" else None
    for j, link in enumerate(v.identities):
        cust = "" if link.customer_id == own else link.customer_id
        value = _link_encoder.encode((link.anonymous_id, cust, link.ts, link.event_id))
        _put(f, f"id{j}", value.decode())
    return f


def to_fields(state: ProfileState) -> dict[str, str]:
    """The Redis hash projection of the state's current view.

    Parameters
    ----------
    state
        A profile state.

    Returns
    -------
    dict[str, str]
        Field -> value, absolute and deterministic (the same state gives the same dict). Every
        field name and value is at most 64 bytes (longer values are split over ``name/1``,
        ``name/2``, ...), so typical profiles stay in Redis's compact listpack encoding. Write it
        whole, replacing the old hash (fields disappear as buckets expire). The layout is
        documented in the README ("Profiles").

    Examples
    --------
    >>> from features.profile import *
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="page_view", ts=1767323045000, customer_id="42"),
    ...            600_000)
    >>> sorted(to_fields(s).items())   # doctest: +NORMALIZE_WHITESPACE
    [('ft', '1767323045000'), ('key', 'c:42'), ('lt', '1767323045000'), ('n:pv', '1'),
     ('ne', '1'), ('pv1h', 'o:1'), ('pv24h', 'o:1'), ('pv7d', 's:1'), ('se30d', 'u:1'),
     ('se7d', 's:1'), ('v', '2')]
    """
    return fields_of(view(state))


def from_fields(raw: Mapping[str, str] | Mapping[bytes, bytes] | Mapping[Any, Any]) -> ProfileView:
    """Rebuild the view from a Redis hash.

    Parameters
    ----------
    raw
        ``HGETALL`` of a profile hash: str or bytes keys and values.

    Returns
    -------
    ProfileView
        What :func:`render` needs; ``from_fields(to_fields(s)) == view(s)``.

    Raises
    ------
    LayoutError
        When the hash is not a profile of layout version ``2``.

    Examples
    --------
    >>> v = from_fields({b"v": b"2", b"key": b"c:42", b"lt": b"86400000", b"vw1h": b"o:1"})
    >>> v.id, v.buckets
    ('42', {'vw1h': {576: 1}})
    """
    counts: dict[str, int] = {}
    interests: dict[str, float] = {}
    f: dict[str, str] = {}
    parts: dict[str, dict[int, str]] = {}
    for k, x in raw.items():
        name: str = k.decode() if isinstance(k, bytes) else k
        val: str = x.decode() if isinstance(x, bytes) else x
        head = name[:2]
        if head == "i:":
            interests[name[2:]] = float(val)
        elif head == "n:":
            code = name[2:]
            counts[_CODE_TYPES.get(code, code)] = int(val)
        elif "/" in name:
            base, _, part = name.partition("/")
            parts.setdefault(base, {})[int(part)] = val
        else:
            f[name] = val
    for base, p in parts.items():
        f[base] = f.get(base, "") + "".join(p[i] for i in sorted(p))
    if f.get("v") != LAYOUT_VERSION or "key" not in f:
        raise LayoutError(f"not a profile of layout version {LAYOUT_VERSION}: v={f.get('v')!r}")
    key = f["key"]
    v = ProfileView(
        key=key,
        first_seen_ts=int(f["ft"]) if "ft" in f else None,
        last_seen_ts=int(f["lt"]) if "lt" in f else None,
        last_purchase_ts=int(f["lp"]) if "lp" in f else None,
        events_total=int(f.get("ne", "0")),
        counts=counts,
        purchases_total=int(f.get("np", "0")),
        revenue_cents=int(f.get("rv", "0")),
        cart_items=int(f.get("ci", "0")),
        cart_cents=int(f.get("cv", "0")),
        interests=interests,
    )
    if "rp" in f:
        v.recent = _recent_decoder.decode(f["rp"])
    if "ck" in f:
        v.cart = _counts_decoder.decode(f["ck"])
    if "bo" in f:
        v.bought = _counts_decoder.decode(f["bo"])
    if "tr" in f:
        v.traits = _traits_decoder.decode(f["tr"])
    if "cf" in f:
        v.conflicts = _conflicts_decoder.decode(f["cf"])
    if "cs" in f:
        v.consent = _consent_decoder.decode(f["cs"])
        v.consent_log = _consent_log_decoder.decode(f.get("ch", "[]"))
    own = v.id if v.kind == "customer" else ""
    links: list[tuple[int, Link]] = []
    for name, val in f.items():
        if name in SERIES_BY_NAME:
            origin = SERIES_BY_NAME[name].live_from(v.last_seen_ts or 0)
            v.buckets[name] = decode_buckets(val, origin)
        elif name.startswith("id") and name[2:].isdigit():
            anon, cust, ts, eid = _link_decoder.decode(val)
            links.append((int(name[2:]), Link(anon, cust or own, ts, eid)))
    v.identities = [link for _, link in sorted(links)]
    return v

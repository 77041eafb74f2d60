"""Every profile feature declared as data: one entry each, everything else derived from them.

A :class:`Feature` says what the profile document shows under its name, as of a time:

- ``count``: a windowed count — the window sum of one *series* (a measure over a window, bucketed
  by a granularity, see :mod:`features.windows`);
- ``money``: a windowed amount — the net of two series of cents, shown in currency units;
- ``scalar``: anything else (lifetime values, recency, cart, interests, ...), a function of the
  profile view and the time.

A *measure* (:data:`MEASURES`) is what an event type adds to its series: 1, its ``total`` in
cents, or (sessions) one per session at its first event. From the entries are derived: the series
(:data:`SERIES`, indexed by the append-only :data:`SERIES_ORDER`: recovery snapshots hold the
indexes), the fold's per-event-type series updates (:data:`SERIES_ADDED_BY`), the document
(:func:`features.profile.render` writes each entry's ``value`` in registry order), the export's
CSV columns (:data:`CSV_FEATURES`), the model inputs (each windowed entry's ``model``;
:mod:`models.features` declares the scalar ones and computes them all once over a source that a
profile state and a rendered document both provide, reading each entry's ``number``/``parse``)
and the README's table (:func:`feature_table`; ``python -m nextbest.readme`` rewrites it, a test
keeps it in sync).

Adding a windowed feature: one entry in :data:`FEATURES`, its series name appended to
:data:`SERIES_ORDER` (import fails until it is), a :class:`Measure` if nothing adds up its event
type yet; then ``python -m nextbest.readme``.

Examples
--------
>>> f = BY_NAME["revenue_30d"]
>>> f.kind, f.series.name, f.minus.name, f.series.window // DAY, f.series.gran // DAY
('money', 'rp30d', 'rn30d', 30, 1)
>>> ones, cents = SERIES_ADDED_BY["purchase"]
>>> [s.name for s in ones], [s.name for s in cents]
(['pu7d', 'pu30d', 'pu90d'], ['rp7d', 'rp30d', 'rp90d'])
>>> [s.name for s in SERIES][:4], CSV_FEATURES[-3:]
(['pv1h', 'pv24h', 'pv7d', 'vw1h'], ('cart_abandoned', 'events_total', 'top_categories'))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from features import interest as _interest
from features.windows import DAY, HOUR, MINUTE, SECOND, Series, window_sum
from schemas.events import format_ts, parse_ts

#: ``cart_abandoned`` needs this much quiet time since the last event.
CART_ABANDON_MS: Final = 30 * MINUTE


class Totals(Protocol):
    """What scalar features read and both a view and a state's aggregate provide (cheaply)."""

    @property
    def first_seen_ts(self) -> int | None: ...
    @property
    def last_seen_ts(self) -> int | None: ...
    @property
    def last_purchase_ts(self) -> int | None: ...
    @property
    def events_total(self) -> int: ...
    @property
    def purchases_total(self) -> int: ...
    @property
    def revenue_cents(self) -> int: ...
    @property
    def cart_items(self) -> int: ...
    @property
    def cart_cents(self) -> int: ...
    @property
    def n_categories(self) -> int: ...


class Profile(Totals, Protocol):
    """What the render reads: a profile view (:class:`features.profile.ProfileView`)."""

    @property
    def buckets(self) -> Mapping[str, Mapping[int, int]]: ...
    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def interests(self) -> dict[str, float]: ...
    @property
    def identities(self) -> Sequence[Any]: ...


# --------------------------------------------------------------------------------------------
# Measures and series


@dataclass(frozen=True, slots=True)
class Measure:
    """What one series family adds up: ``code`` prefixes its series names (``pv`` -> ``pv1h``)."""

    code: str
    event_type: str | None  # None: sessions, counted at their first event
    adds: Literal["one", "cents", "session"]
    doc: str


#: Every measure, by code.
MEASURES: Final = {
    m.code: m
    for m in (
        Measure("pv", "page_view", "one", "page views"),
        Measure("vw", "product_view", "one", "product views"),
        Measure("ac", "add_to_cart", "one", "add to carts"),
        Measure("pu", "purchase", "one", "purchases"),
        Measure("rp", "purchase", "cents", "purchase totals, cents"),
        Measure("rn", "refund", "cents", "refund totals, cents"),
        Measure("se", None, "session", "sessions, at their first event"),
    )
}

#: The in-memory index of every series is its position here. Recovery snapshots hold packed
#: bucket keys (index << 32 | bucket): append new series at the end; never reorder or remove.
SERIES_ORDER: Final = (
    *("pv1h", "pv24h", "pv7d", "vw1h", "vw24h", "vw7d", "ac1h", "ac24h", "ac7d"),
    *("pu7d", "pu30d", "pu90d", "rp7d", "rp30d", "rp90d", "rn7d", "rn30d", "rn90d"),
    *("se7d", "se30d"),
)


def _label(window: int) -> str:
    return f"{window // HOUR}h" if window < 7 * DAY else f"{window // DAY}d"


_MEASURE_OF: Final[dict[str, Measure]] = {}  # series name -> its measure


def _series(code: str, window: int, gran: int) -> Series:
    name = code + _label(window)
    if code not in MEASURES:
        raise ValueError(f"series {name}: no measure {code!r} in MEASURES")
    if name not in SERIES_ORDER:
        raise ValueError(f"series {name} is not in SERIES_ORDER: append it (never reorder)")
    if gran * 24 > window:
        raise ValueError(f"series {name}: granularity {gran} too coarse for its window")
    _MEASURE_OF[name] = MEASURES[code]
    return Series(name, SERIES_ORDER.index(name), window, gran)


# --------------------------------------------------------------------------------------------
# Features


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature of the profile document.

    ``value(view, as_of)`` is what the document shows; ``csv`` says whether it is a CSV column
    (``cell``: its value; ``joined``: a list joined by ``|``, after the cells); ``model`` whether
    ``log_<name>`` (log1p of the value) is a model input (windowed features; scalar inputs are
    declared in :data:`MODEL_INPUTS`). Scalars read by model inputs have ``number(totals, as_of)``
    (the value as a number, from a view or straight from a state) and, when the document's value
    is not that number (a timestamp string, a list), ``parse`` from the document's value.
    """

    name: str
    kind: Literal["count", "money", "scalar"]
    doc: str
    value: Callable[[Profile, int], Any]
    series: Series | None = None
    minus: Series | None = None
    number: Callable[[Totals, int], float | None] | None = None
    parse: Callable[[Any], float | None] | None = None
    csv: Literal["cell", "joined"] | None = "cell"
    model: bool = False


def _count(name: str, code: str, window: int, gran: int, doc: str, model: bool = True) -> Feature:
    s = _series(code, window, gran)

    def value(v: Profile, as_of: int) -> int:
        d = v.buckets.get(s.name)
        return window_sum(d, s, as_of) if d else 0

    return Feature(name, "count", doc, value, series=s, model=model)


def _money(name: str, plus: str, minus: str, window: int, gran: int, doc: str) -> Feature:
    p, m = _series(plus, window, gran), _series(minus, window, gran)

    def value(v: Profile, as_of: int) -> float:
        b = v.buckets
        dp, dm = b.get(p.name), b.get(m.name)
        net = (window_sum(dp, p, as_of) if dp else 0) - (window_sum(dm, m, as_of) if dm else 0)
        return net / 100

    return Feature(name, "money", doc, value, series=p, minus=m, model=True)


def _windowed(
    prefix: str, code: str, spec: tuple[tuple[int, int], ...], doc: str
) -> tuple[Feature, ...]:
    """``<prefix>_<window>`` counts of one measure; hour windows are no model input (they are
    almost always 0 in training snapshots, taken before a day's first event)."""
    return tuple(_count(f"{prefix}_{_label(w)}", code, w, g, doc, model=w > HOUR) for w, g in spec)


def _days(as_of: int, ref: int | None) -> float | None:
    if ref is None or as_of < ref:
        return None
    return round((as_of - ref) / DAY, 3)


def _ts(ms: int | None) -> str | None:
    return None if ms is None else format_ts(ms)


def _number(name: str, fn: Callable[[Totals, int], Any], doc: str) -> Feature:
    """A scalar whose document value is the number model inputs read."""
    return Feature(name, "scalar", doc, fn, number=fn)


def _timestamp(name: str, ms: Callable[[Totals], int | None], doc: str) -> Feature:
    return Feature(
        name,
        "scalar",
        doc,
        lambda v, _: _ts(ms(v)),
        number=lambda t, _: ms(t),
        parse=parse_ts,
    )


def _abandoned(v: Totals, as_of: int) -> bool:
    last = v.last_seen_ts
    return v.cart_items > 0 and last is not None and as_of - last >= CART_ABANDON_MS


def _top(v: Profile, _: int) -> list[str]:
    return [c for c, _ in _interest.ranked(v.interests)[:3]]


def _scores(v: Profile, as_of: int) -> dict[str, float]:
    ref = v.last_seen_ts if v.last_seen_ts is not None else as_of
    # (a read far before the newest event would overflow: scale by at most 2**64)
    factor = 2.0 ** min((ref - as_of) / _interest.HALF_LIFE_MS, 64.0)
    return {c: round(x * factor, 4) for c, x in _interest.ranked(v.interests)}


def _identities(v: Profile, _: int) -> list[dict[str, Any]]:
    return [
        {
            "anonymous_id": link.anonymous_id,
            "customer_id": link.customer_id,
            "ts": format_ts(link.ts),
            "event_id": link.event_id,
        }
        for link in v.identities
    ]


_SHORT: Final = ((HOUR, 150 * SECOND), (24 * HOUR, HOUR), (7 * DAY, 6 * HOUR))
_LONG: Final = ((7 * DAY, 6 * HOUR), (30 * DAY, DAY), (90 * DAY, 3 * DAY))
_SESS: Final = ((7 * DAY, 6 * HOUR), (30 * DAY, DAY))
_M: Final = "\N{MINUS SIGN}"
_IN_W: Final = f"with ts in (t {_M} W, t]"

#: Every feature, in the profile document's order (which is also the CSV columns' order).
FEATURES: Final[tuple[Feature, ...]] = (
    *_windowed("page_views", "pv", _SHORT, f"number of `page_view` events {_IN_W}"),
    *_windowed("product_views", "vw", _SHORT, "number of `product_view` events, same"),
    *_windowed("add_to_carts", "ac", _SHORT, "number of `add_to_cart` events, same"),
    *_windowed(
        "sessions", "se", _SESS, f"number of sessions whose *first* event has ts in (t {_M} W, t]"
    ),
    *_windowed("purchases", "pu", _LONG, "number of `purchase` events"),
    *(
        _money(
            f"revenue_{_label(w)}",
            "rp",
            "rn",
            w,
            g,
            f"Σ `total` of purchases {_M} Σ `total` of refunds, each at its own ts",
        )
        for w, g in _LONG
    ),
    _number("purchases_total", lambda v, _: v.purchases_total, "lifetime purchases"),
    _number("revenue_total", lambda v, _: v.revenue_cents / 100, "lifetime net revenue"),
    _number(
        "avg_order_value",
        lambda v, _: round(v.revenue_cents / n / 100, 2) if (n := v.purchases_total) else None,
        "`revenue_total` / `purchases_total`, rounded to cents; null without a purchase",
    ),
    _timestamp("first_seen_ts", lambda v: v.first_seen_ts, "oldest event of any type"),
    _timestamp("last_seen_ts", lambda v: v.last_seen_ts, "newest event of any type"),
    _timestamp("last_purchase_ts", lambda v: v.last_purchase_ts, "newest purchase"),
    _number(
        "days_since_last_purchase",
        lambda v, t: _days(t, v.last_purchase_ts),
        f"(t {_M} `last_purchase_ts`) / 1 day",
    ),
    _number(
        "days_since_last_seen",
        lambda v, t: _days(t, v.last_seen_ts),
        f"(t {_M} `last_seen_ts`) / 1 day",
    ),
    _number(
        "tenure_days", lambda v, t: _days(t, v.first_seen_ts), f"(t {_M} `first_seen_ts`) / 1 day"
    ),
    _number("cart_items", lambda v, _: v.cart_items, "items in the cart"),
    _number("cart_value", lambda v, _: v.cart_cents / 100, "value of the cart"),
    _number("cart_abandoned", _abandoned, "items in the cart and 30 minutes quiet"),
    Feature(
        "top_categories",
        "scalar",
        "the three highest interest scores",
        _top,
        number=lambda v, _: min(3, v.n_categories),
        parse=len,
        csv="joined",
    ),
    Feature("category_scores", "scalar", "interest per category", _scores, csv=None),
    Feature(
        "counts",
        "scalar",
        "lifetime events by type",
        lambda v, _: dict(sorted(v.counts.items())),
        csv=None,
    ),
    _number("events_total", lambda v, _: v.events_total, "lifetime events"),
    Feature("identities", "scalar", "identity links", _identities, csv=None),
)
BY_NAME: Final = {f.name: f for f in FEATURES}


def _derive_series() -> tuple[Series, ...]:
    found: dict[str, Series] = {}
    for f in FEATURES:
        for s in (f.series, f.minus):
            if s is not None and found.setdefault(s.name, s) != s:
                raise ValueError(f"series {s.name}: two features disagree on its granularity")
    missing = set(SERIES_ORDER) - found.keys()
    if missing:
        raise ValueError(f"SERIES_ORDER names series no feature reads: {sorted(missing)}")
    return tuple(found[name] for name in SERIES_ORDER)


#: Every series, in index (storage) order.
SERIES: Final = _derive_series()
SERIES_BY_NAME: Final = {s.name: s for s in SERIES}


def _measure(s: Series) -> Measure:
    return _MEASURE_OF[s.name]


#: Per event type: (the series it adds 1 to, the series it adds its ``total`` in cents to).
SERIES_ADDED_BY: Final = {
    t: (
        tuple(s for s in SERIES if _measure(s).event_type == t and _measure(s).adds == "one"),
        tuple(s for s in SERIES if _measure(s).event_type == t and _measure(s).adds == "cents"),
    )
    for t in dict.fromkeys(m.event_type for m in MEASURES.values() if m.event_type is not None)
}
#: The series of sessions (derived from the session ids and gap runs, not added per event).
SESSION_SERIES: Final = tuple(s for s in SERIES if _measure(s).adds == "session")

#: The CSV columns of the profile features, in order: the cells, then the joined lists.
CSV_FEATURES: Final = (
    *(f.name for f in FEATURES if f.csv == "cell"),
    *(f.name for f in FEATURES if f.csv == "joined"),
)


# --------------------------------------------------------------------------------------------
# README


def _gran(ms: int) -> str:
    for unit, label in ((DAY, "d"), (HOUR, "h"), (MINUTE, "min")):
        if ms % unit == 0:
            return f"{ms // unit} {label}"
    return f"{ms // SECOND} s"


def _group(features: Sequence[Feature]) -> list[list[Feature]]:
    """Consecutive windowed features of the same definition: one README row each."""
    groups: list[list[Feature]] = []
    for f in features:
        if groups and (groups[-1][0].doc, groups[-1][0].kind) == (f.doc, f.kind):
            groups[-1].append(f)
        else:
            groups.append([f])
    return groups


def feature_table() -> str:
    """The README's table of windowed features and list of series (Markdown)."""
    rows = ["| feature | definition, as of `t` | g | model input |", "| --- | --- | --- | --- |"]
    for g in _group([f for f in FEATURES if f.series is not None]):
        first, rest = g[0].name, [f.name[f.name.rfind("_") :] for f in g[1:]]
        names = ", ".join(f"`{n}`" for n in (first, *rest))
        grans = ", ".join(_gran(f.series.gran) for f in g if f.series is not None)
        model = ", ".join(f"`log_{f.name}`" for f in g if f.model) or "no"
        rows.append(f"| {names} | {g[0].doc} | {grans} | {model} |")
    last = {_measure(s).code: s.name for s in SERIES}
    listed = ", ".join(
        f"`{s.name}` ({_measure(s).doc})" if last[_measure(s).code] == s.name else f"`{s.name}`"
        for s in SERIES
    )
    rows += ["", f"Series, in storage (index) order: {listed}."]
    return "\n".join(rows)

"""The profile state: its constants, the aggregate of folded events, the state and view
classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final, NamedTuple

from features.consent import Grant
from features.registry import FEATURES
from features.traits import Trait
from features.windows import DAY, HOUR, MINUTE
from schemas.events import Event
from schemas.keys import is_device

LATE: Final = "late"
DUPLICATE: Final = "duplicate"
APPLIED: Final = "applied"
#: Not applied: the profile's ``analytics`` consent is withdrawn (:mod:`features.consent`).
NO_CONSENT: Final = "no_consent"

#: Version of the Redis projection layout; bumped when the field layout changes.
LAYOUT_VERSION: Final = "2"
#: An ``event_id`` seen within this much event time of an applied one is a duplicate.
DEDUP_MS: Final = DAY
#: Events without ``session_id`` start a new session after this gap.
SESSION_GAP_MS: Final = 30 * MINUTE
#: Session ids are remembered this long (before the newest event): a reused id is not recounted.
SESSION_KEEP_MS: Final = 31 * DAY
#: Lateness assumed by :func:`merge_into` for a state that never ingested anything.
DEFAULT_LATENESS_MS: Final = 10 * MINUTE
#: Identity links kept per profile (the newest by ``(ts, event_id)``).
MAX_IDENTITIES: Final = 20
#: Largest Redis field name or value we write (Redis's default ``hash-max-listpack-value``).
MAX_FIELD_BYTES: Final = 64
#: Product interactions (views, cart additions) remembered, newest last: what recommendations
#: react to; products bought remembered (the newest), and the most products a cart lists.
RECENT_PRODUCTS: Final = 10
BOUGHT_PRODUCTS: Final = 30
CART_PRODUCTS: Final = 30

# Buffer size beyond which the settled part is advanced even without an out-of-order event.
_BUFFER_CAP: Final = 64
# How often (in event time) the aggregates drop buckets, and sessions, that can no longer count,
# and the duplicate map its old ids (amortised: a scan each time).
_PRUNE_EVERY_MS: Final = HOUR
_PRUNE_SESSIONS_EVERY_MS: Final = DAY
_PRUNE_SEEN_EVERY_MS: Final = 6 * HOUR

#: Short codes of the event types in the Redis ``n:<code>`` lifetime-count fields.
TYPE_CODES: Final = {
    "page_view": "pv",
    "product_view": "vw",
    "search": "sr",
    "add_to_cart": "ac",
    "remove_from_cart": "rc",
    "checkout_start": "cs",
    "login": "li",
    "logout": "lo",
    "signup": "su",
    "purchase": "pu",
    "refund": "rf",
    "decision_outcome": "do",
}
_CODE_TYPES: Final = {v: k for k, v in TYPE_CODES.items()}


#: Public windowed count features and the series each one reads (from :mod:`features.registry`).
COUNT_FEATURES: Final = tuple((f.name, f.series) for f in FEATURES if f.kind == "count")
#: Public windowed revenue features: (name, purchases series, refunds series), in cents.
REVENUE_FEATURES: Final = tuple((f.name, f.series, f.minus) for f in FEATURES if f.kind == "money")


class LayoutError(ValueError):
    """A Redis hash that is not a profile of the current layout version."""


class Link(NamedTuple):
    """An identity link: ``anonymous_id`` linked to ``customer_id`` by ``event_id`` at ``ts``."""

    anonymous_id: str
    customer_id: str
    ts: int
    event_id: str


@dataclass(slots=True)
class Aggregate:
    """Everything folded from an ordered stream of events (one part of a :class:`ProfileState`).

    Timestamps are epoch ms, amounts integer cents. ``buckets`` packs every windowed series in one
    map (see :mod:`features.windows`); ``interest`` holds scores relative to ``iref``; ``sids``
    maps a ``session_id`` to its first ts and ``runs`` a gap-run's first ts to its last ts.
    """

    buckets: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    events: int = 0
    first: int | None = None
    last: int | None = None
    purchases: int = 0
    revenue: int = 0
    last_purchase: int | None = None
    cart_items: int = 0
    cart_cents: int = 0
    cart_ts: int | None = None
    iref: int = 0
    interest: dict[str, float] = field(default_factory=dict)
    sids: dict[str, int] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)
    run_first: int | None = None
    run_last: int | None = None
    prune_at: int = 0
    sessions_pruned_at: int = 0
    #: (ts, event_id, kind ``v``/``c``, product, category) of the newest product interactions
    recent: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    #: product -> quantity in the cart; product -> newest purchase ts
    cart: dict[str, int] = field(default_factory=dict)
    bought: dict[str, int] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        # Snapshots written before the product fields existed lack them: defaults first.
        self.recent, self.cart, self.bought = [], {}, {}
        d, slots = state if isinstance(state, tuple) else (state, None)
        for k, v in chain((d or {}).items(), (slots or {}).items()):
            setattr(self, k, v)

    def copy(self) -> Aggregate:
        """An independent copy."""
        return Aggregate(
            dict(self.buckets),
            dict(self.counts),
            self.events,
            self.first,
            self.last,
            self.purchases,
            self.revenue,
            self.last_purchase,
            self.cart_items,
            self.cart_cents,
            self.cart_ts,
            self.iref,
            dict(self.interest),
            dict(self.sids),
            dict(self.runs),
            self.run_first,
            self.run_last,
            self.prune_at,
            self.sessions_pruned_at,
            list(self.recent),
            dict(self.cart),
            dict(self.bought),
        )

    # What scalar features read (:class:`features.registry.Totals`), named as in the view.

    @property
    def first_seen_ts(self) -> int | None:
        """Oldest event ts."""
        return self.first

    @property
    def last_seen_ts(self) -> int | None:
        """Newest event ts."""
        return self.last

    @property
    def last_purchase_ts(self) -> int | None:
        """Newest purchase ts."""
        return self.last_purchase

    @property
    def events_total(self) -> int:
        """Lifetime events."""
        return self.events

    @property
    def purchases_total(self) -> int:
        """Lifetime purchases."""
        return self.purchases

    @property
    def revenue_cents(self) -> int:
        """Lifetime net revenue, cents."""
        return self.revenue

    @property
    def n_categories(self) -> int:
        """Categories with an interest score."""
        return len(self.interest)


class _Keyed:
    """``kind`` and ``id`` of something keyed ``c:<customer_id>`` or ``a:<anonymous_id>``."""

    __slots__ = ()
    key: str

    @property
    def kind(self) -> str:
        """``customer`` or ``anonymous``."""
        return "anonymous" if is_device(self.key) else "customer"

    @property
    def id(self) -> str:
        """The customer id or anonymous id without its prefix."""
        return self.key[2:]


@dataclass(slots=True)
class ProfileState(_Keyed):
    """One customer's (or anonymous visitor's) authoritative state; see the module docstring.

    ``settled`` + ``buffer`` replayed in ``(ts, event_id)`` order == ``current``. ``seen`` maps the
    recently applied event ids to their ts (for duplicates); ``identities`` holds identity links.
    """

    key: str
    settled: Aggregate = field(default_factory=Aggregate)
    current: Aggregate = field(default_factory=Aggregate)
    buffer: list[Event] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    seen_prune_at: int = 0
    lateness_ms: int = DEFAULT_LATENESS_MS
    identities: list[Link] = field(default_factory=list)
    #: trait name -> the value kept (:mod:`features.traits`)
    traits: dict[str, Trait] = field(default_factory=dict)
    #: identifier token -> (its owner, every customer that claimed it), when it is contested
    conflicts: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    #: purpose -> the newest decision, and the newest decisions in time order
    #: (:mod:`features.consent`)
    consent: dict[str, Grant] = field(default_factory=dict)
    consent_log: list[tuple[str, Grant]] = field(default_factory=list)

    def __setstate__(self, state: Any) -> None:
        # Snapshots written before traits, conflicts and consent existed lack them: defaults.
        self.traits, self.conflicts, self.consent, self.consent_log = {}, {}, {}, []
        d, slots = state if isinstance(state, tuple) else (state, None)
        for k, v in chain((d or {}).items(), (slots or {}).items()):
            setattr(self, k, v)

    @property
    def purchases_total(self) -> int:
        """Lifetime purchases (cheap: no view needed)."""
        return self.current.purchases

    @property
    def revenue_total(self) -> float:
        """Lifetime revenue net of refunds (cheap: no view needed)."""
        return self.current.revenue / 100

    @property
    def last_purchase_ts(self) -> int | None:
        """Newest purchase ts (cheap: no view needed)."""
        return self.current.last_purchase


@dataclass(slots=True)
class ProfileView(_Keyed):
    """What :func:`render` needs: the Redis projection of a state, decoded.

    ``buckets`` maps a series name (``pv1h``, ``rp30d``, ``se7d``, ...) to its non-zero buckets
    that can still count (``bucket index -> count or cents``); ``interests`` are the category
    scores as of ``last_seen_ts`` (9 significant digits).
    """

    key: str
    first_seen_ts: int | None = None
    last_seen_ts: int | None = None
    last_purchase_ts: int | None = None
    events_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    purchases_total: int = 0
    revenue_cents: int = 0
    cart_items: int = 0
    cart_cents: int = 0
    interests: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[int, int]] = field(default_factory=dict)
    identities: list[Link] = field(default_factory=list)
    #: (ts, kind ``v``/``c``, product, category) of the newest product interactions, newest last
    recent: list[tuple[int, str, str, str]] = field(default_factory=list)
    #: product -> quantity in the cart; product -> newest purchase ts
    cart: dict[str, int] = field(default_factory=dict)
    bought: dict[str, int] = field(default_factory=dict)
    #: trait name -> (value, source, ts)
    traits: dict[str, tuple[Any, str, int]] = field(default_factory=dict)
    #: identifier token -> (owner, claimants)
    conflicts: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    #: purpose -> (granted, source, ts); the history: (purpose, granted, source, ts), oldest first
    consent: dict[str, tuple[bool, str, int]] = field(default_factory=dict)
    consent_log: list[tuple[str, bool, str, int]] = field(default_factory=list)

    @property
    def revenue_total(self) -> float:
        """Lifetime revenue net of refunds, in currency units."""
        return self.revenue_cents / 100

    @property
    def cart_value(self) -> float:
        """Cart value in currency units."""
        return self.cart_cents / 100

    @property
    def n_categories(self) -> int:
        """Categories with an interest score."""
        return len(self.interests)


# Products a profile remembers (what recommendations read)


def purchased(e: Event) -> list[str]:
    """The products of a purchase: its lines', else its own ``product_id``."""
    if e.items:
        return [it.product_id for it in e.items]
    return [e.product_id] if e.product_id else []


def keep_newest(bought: dict[str, int]) -> None:
    """Keep the :data:`BOUGHT_PRODUCTS` newest purchases (ties: the greatest product id)."""
    keep = sorted(bought.items(), key=lambda kv: (kv[1], kv[0]))[-BOUGHT_PRODUCTS:]
    bought.clear()
    bought.update(sorted(keep))


def remember(a: Aggregate, e: Event, kind: str) -> None:
    """Remember a product interaction (the newest :data:`RECENT_PRODUCTS`)."""
    a.recent.append((e.ts, e.event_id, kind, e.product_id or "", e.category or ""))
    if len(a.recent) > RECENT_PRODUCTS:
        del a.recent[0]

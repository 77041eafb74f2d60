"""The event contract: typed structs and one fast decoder that never raises.

Producers send one JSON object per Kafka message or JSONL line (see DESIGN.md, "Contracts").
:func:`decode_event` turns those bytes into an :class:`Event` or a :class:`DecodeError` whose
``reason`` is machine readable and drawn from a finite set (it is used as a metric label):

``invalid_json``, ``not_an_object``, ``too_large``, ``missing_field:<name>``,
``bad_type:<name>``, ``bad_value:<name>``, ``unknown_type``, ``bad_timestamp``, ``no_identity``.

Examples
--------
>>> ev = decode_event(b'{"event_id":"e1","type":"page_view","ts":"2026-01-02T03:04:05Z",'
...                   b'"anonymous_id":"a1"}')
>>> ev.type, ev.ts, ev.key
('page_view', 1767323045000, 'a:a1')
>>> decode_event(b'{"event_id":"e1","type":"page_view","ts":1767323045000}').reason
'no_identity'
>>> decode_event(b'{"event_id":"e1","type":"purchase","ts":1767323045000,'
...              b'"anonymous_id":"a"}').reason
'missing_field:customer_id'
>>> decode_event(b'{"type":"page_view"').reason
'invalid_json'
>>> decode_event(b'{"event_id":"e1","type":"teleport","ts":1767323045000,"customer_id":"c"}').reason
'unknown_type'
>>> decode_event(b'{"event_id":"e1","type":"page_view","ts":"yesterday","customer_id":"c"}').reason
'bad_timestamp'
>>> decode_event(b'{"event_id":"e1","type":"page_view","ts":1767323045000,"customer_id":7}').reason
'bad_type:customer_id'
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from schemas.consent import CONSENT, check_purposes
from schemas.identifiers import UNSALTED, IdentifierHasher
from schemas.keys import customer_key, device_key
from schemas.timestamps import MAX_TS_MS as MAX_TS_MS
from schemas.timestamps import MIN_TS_MS as MIN_TS_MS
from schemas.timestamps import format_ts as format_ts
from schemas.timestamps import parse_as_of as parse_as_of
from schemas.timestamps import parse_ts as parse_ts
from schemas.traits import IDENTIFY, Fields, check_source_fields

#: Largest accepted event, in bytes of its JSON encoding.
MAX_EVENT_BYTES: Final = 16 * 1024
#: Largest accepted ``properties`` object, in number of keys.
MAX_PROPERTIES: Final = 64
#: Largest accepted ``items`` list of a transaction.
MAX_ITEMS: Final = 200
#: Longest accepted identifier (event, customer, anonymous, session, product, order ids).
MAX_ID_LEN: Final = 128

CLICKSTREAM_TYPES: Final = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_start",
        "login",
        "logout",
        "signup",
    }
)
TRANSACTION_TYPES: Final = frozenset({"purchase", "refund"})
#: Decision feedback: the outcome of a served action (its ``outcome``: one of
#: :data:`OUTCOME_TYPES`, with an optional ``value``, e.g. a conversion's order value).
FEEDBACK_TYPES: Final = frozenset({"decision_outcome"})
#: What happened after a decision: the action was shown, clicked, or led to a conversion.
OUTCOME_TYPES: Final = ("impression", "click", "conversion")
#: Source systems (CRM, ERP, shop back office, consent banners): ``identify`` with ``traits``, and
#: ``consent`` with ``purposes``, each with a ``source``.
SOURCE_TYPES: Final = frozenset({IDENTIFY, CONSENT})
EVENT_TYPES: Final = CLICKSTREAM_TYPES | TRANSACTION_TYPES | FEEDBACK_TYPES | SOURCE_TYPES
#: Identity-linking types: carrying both ids links the anonymous id to the customer.
LINK_TYPES: Final = frozenset({"login", "signup"})


class Item(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of a transaction."""

    product_id: str
    category: str | None = None
    price: float = 0.0
    quantity: int = 1


class _WireItem(msgspec.Struct, kw_only=True):
    """A line as it arrives (``quantity``: a JSON number, see :func:`_whole`)."""

    product_id: str
    category: str | None = None
    price: float = 0.0
    quantity: int | float = 1


class _WireEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The event as it arrives: every field optional, so missing fields get our own reason."""

    event_id: str | None = None
    type: str | None = None
    ts: int | float | str | None = None
    customer_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] | None = None
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | float | None = None
    order_id: str | None = None
    total: float | None = None
    currency: str | None = None
    items: list[_WireItem] | None = None
    decision_id: str | None = None
    action_id: str | None = None
    outcome: str | None = None
    value: float | None = None
    traits: dict[str, Any] | None = None
    source: str | None = None
    email: str | None = None
    phone: str | None = None
    purposes: dict[str, str] | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A validated event. ``ts`` is epoch milliseconds (UTC)."""

    event_id: str
    type: str
    ts: int
    customer_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] | None = None
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    order_id: str | None = None
    total: float | None = None
    currency: str | None = None
    items: list[Item] | None = None
    decision_id: str | None = None
    action_id: str | None = None
    outcome: str | None = None
    value: float | None = None
    traits: dict[str, Any] | None = None
    source: str | None = None
    email: str | None = None
    phone: str | None = None
    #: consent: purpose -> granted | withdrawn (:mod:`schemas.consent`)
    purposes: dict[str, str] | None = None

    @property
    def key(self) -> str:
        """The partition key: ``c:<customer_id>``, else ``a:<anonymous_id>``, else
        ``a:<identifier token>`` (email, else phone: see :mod:`features.identifiers`)."""
        if self.customer_id is not None:
            return customer_key(self.customer_id)
        return device_key(self.anonymous_id or self.email or self.phone or "")


class DecodeError(msgspec.Struct, frozen=True):
    """A rejected event: why. ``detail`` is human readable, ``reason`` machine readable."""

    reason: str
    detail: str = ""


WIRE_FIELDS: Final = frozenset(_WireEvent.__struct_fields__)
ID_FIELDS: Final = (
    "event_id",
    "customer_id",
    "anonymous_id",
    "session_id",
    "product_id",
    "order_id",
    "decision_id",
    "action_id",
)
_decoder: Final = msgspec.json.Decoder(_WireEvent)
_MISSING_RE: Final = re.compile(r"missing required field `([A-Za-z_]+)`")
_AT_RE: Final = re.compile(r"at `\$\.([A-Za-z_]+)")


def _field_from_message(msg: str) -> str | None:
    m = _AT_RE.search(msg)
    if m and m.group(1) in WIRE_FIELDS:
        return m.group(1)
    return None


def _validation_reason(exc: msgspec.ValidationError) -> DecodeError:
    msg = str(exc)
    m = _MISSING_RE.search(msg)
    if m:
        # Only Item has required fields: a line item without product_id.
        return DecodeError("missing_field:items", msg)
    if msg.startswith("Expected `object`") and "$." not in msg:
        return DecodeError("not_an_object", msg)
    field = _field_from_message(msg)
    if field is None:
        return DecodeError("invalid_json", msg)
    return DecodeError(f"bad_type:{field}", msg)


def decode_event(
    data: bytes | bytearray | memoryview | str, ids: IdentifierHasher = UNSALTED
) -> Event | DecodeError:
    """Decode and validate one event. Never raises; every failure is a :class:`DecodeError`.
    Identifiers (``email``, ``phone``, and those of ``traits``) are hashed with ``ids``."""
    try:
        if len(data) > MAX_EVENT_BYTES:
            return DecodeError("too_large", f"{len(data)} bytes > {MAX_EVENT_BYTES}")
        try:
            w = _decoder.decode(data)
        except msgspec.ValidationError as exc:
            return _validation_reason(exc)
        except msgspec.DecodeError as exc:
            return DecodeError("invalid_json", str(exc))
        return _validate(w, ids)
    except Exception as exc:  # pragma: no cover - defensive: the decoder must never raise
        return DecodeError("invalid_json", f"{type(exc).__name__}: {exc}")


#: Deepest nesting accepted inside ``properties`` (deeper values cannot be pickled into the
#: dataflow's snapshots: Python's recursion limit).
MAX_PROPERTIES_DEPTH: Final = 32


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects deeper than ``limit`` (iterative: no recursion).

    >>> _too_deep({"a": [[1]]}, 3), _too_deep({"a": [[1]]}, 2)
    (False, True)
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v if isinstance(x, dict | list))
    return False


def _whole(v: float) -> int | None:
    """A JSON number without a fraction as an int, else ``None``: JSON (and JSON Schema's
    ``integer``) does not tell ``2`` from ``2.0``, so neither do ``ts`` and the quantities.

    >>> _whole(2.0), _whole(2.5)
    (2, None)
    """
    return int(v) if v.is_integer() else None


def _validate(w: _WireEvent, ids: IdentifierHasher) -> Event | DecodeError:
    for name in ("event_id", "type", "ts"):
        if getattr(w, name) is None:
            return DecodeError(f"missing_field:{name}")
    for name in ID_FIELDS:
        v = getattr(w, name)
        if v is not None and (not v or len(v) > MAX_ID_LEN):
            return DecodeError(f"bad_value:{name}", f"empty or longer than {MAX_ID_LEN}")
    assert w.type is not None and w.ts is not None and w.event_id is not None
    if w.type not in EVENT_TYPES:
        return DecodeError("unknown_type", f"type {w.type[:40]!r}")
    raw_ts = _whole(w.ts) if isinstance(w.ts, float) else w.ts
    if raw_ts is None:
        return DecodeError("bad_type:ts", f"ts {w.ts!r}: epoch milliseconds are an integer")
    ts = parse_ts(raw_ts)
    if ts is None:
        return DecodeError("bad_timestamp", f"ts {str(w.ts)[:40]!r}")
    src = check_source_fields(w.type, w.traits, w.source, w.email, w.phone, ids)
    if not isinstance(src, Fields):
        return DecodeError(*src)
    traits, source, email, phone = src
    purposes = check_purposes(w.type, w.purposes)
    if isinstance(purposes, tuple):
        return DecodeError(*purposes)
    if w.customer_id is None and w.anonymous_id is None and email is None and phone is None:
        return DecodeError("no_identity", "neither customer_id nor anonymous_id")
    if w.properties is not None and len(w.properties) > MAX_PROPERTIES:
        return DecodeError("too_large", f"properties has more than {MAX_PROPERTIES} keys")
    if w.properties is not None and _too_deep(w.properties, MAX_PROPERTIES_DEPTH):
        return DecodeError(
            "bad_value:properties", f"properties nested deeper than {MAX_PROPERTIES_DEPTH}"
        )
    for name in ("price", "total", "value"):
        v = getattr(w, name)
        if v is not None and not (0.0 <= v < 1e9):
            return DecodeError(f"bad_value:{name}", f"{name} must be in [0, 1e9)")
    quantity = _whole(w.quantity) if isinstance(w.quantity, float) else w.quantity
    if w.quantity is not None and quantity is None:
        return DecodeError("bad_type:quantity", f"quantity {w.quantity!r} is not an integer")
    if quantity is not None and not (0 < quantity <= 10_000):
        return DecodeError("bad_value:quantity", "quantity must be in [1, 10000]")
    if w.type in TRANSACTION_TYPES:
        if w.customer_id is None:
            return DecodeError("missing_field:customer_id", f"{w.type} needs a customer_id")
        if w.total is None:
            return DecodeError("missing_field:total", f"{w.type} needs a total")
    items: list[Item] | None = None
    if w.items is not None:
        if len(w.items) > MAX_ITEMS:
            return DecodeError("too_large", f"more than {MAX_ITEMS} items")
        items = []
        for it in w.items:
            q = _whole(it.quantity) if isinstance(it.quantity, float) else it.quantity
            if q is None:
                return DecodeError("bad_type:items", "an item's quantity is not an integer")
            if not (0.0 <= it.price < 1e9) or not (0 < q <= 10_000):
                return DecodeError("bad_value:items", "item price or quantity out of range")
            items.append(Item(product_id=it.product_id, category=it.category, price=it.price,
                              quantity=q))  # fmt: skip
    if w.type in FEEDBACK_TYPES:
        for name in ("decision_id", "action_id", "outcome"):
            if getattr(w, name) is None:
                return DecodeError(f"missing_field:{name}")
        if w.outcome not in OUTCOME_TYPES:
            return DecodeError("bad_value:outcome", f"outcome must be one of {OUTCOME_TYPES}")
    return Event(
        event_id=w.event_id,
        type=w.type,
        ts=ts,
        customer_id=w.customer_id,
        anonymous_id=w.anonymous_id,
        session_id=w.session_id,
        properties=w.properties,
        product_id=w.product_id,
        category=w.category,
        price=w.price,
        quantity=quantity,
        order_id=w.order_id,
        total=w.total,
        currency=w.currency,
        items=items,
        decision_id=w.decision_id,
        action_id=w.action_id,
        outcome=w.outcome,
        value=w.value,
        traits=traits,
        source=source,
        email=email,
        phone=phone,
        purposes=purposes or None,
    )


def encode_event(event: Event) -> bytes:
    """Canonical JSON of an event (``ts`` as RFC 3339 UTC).

    >>> e = Event(event_id="e", type="login", ts=1767323045000, customer_id="c", anonymous_id="a")
    >>> encode_event(e)
    b'{"event_id":"e","type":"login","ts":"2026-01-02T03:04:05Z","customer_id":"c","anonymous_id":"a"}'
    >>> decode_event(encode_event(e)) == e
    True
    """
    d = msgspec.to_builtins(event)
    d["ts"] = format_ts(event.ts)
    return msgspec.json.encode(d)


#: Every reason :func:`decode_event` can return (the set is finite: safe as a metric label).
REASONS: Final = frozenset(
    {"invalid_json", "not_an_object", "too_large", "unknown_type", "bad_timestamp", "no_identity"}
    # (decided by the dataflow against the record's own time, see dataflows.records)
    | {"future_timestamp", "late"}
    # (decision records in the input, and the feedback join's unmatched outcomes)
    | {"bad_decision", "decisions_off", "outcome_unknown_decision", "outcome_not_served"}
    # (an erasure request of the input that is not a valid one, see schemas.erasure)
    | {"bad_erasure"}
    | {"outcome_outside_window", "outcome_late"}
    | {f"missing_field:{n}" for n in WIRE_FIELDS}
    | {f"bad_type:{n}" for n in WIRE_FIELDS}
    | {f"bad_value:{n}" for n in WIRE_FIELDS}
)

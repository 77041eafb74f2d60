"""Event contract: decoder units and properties, JSON Schema kept in sync with the structs."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import REASONS, DecodeError, Event, decode_event, encode_event
from schemas.events import EVENT_TYPES, MAX_EVENT_BYTES, WIRE_FIELDS
from schemas.jsonschema import OUT_DIR, event_schema, rendered

VALID: dict[str, Any] = {
    "event_id": "e-1",
    "type": "purchase",
    "ts": "2026-03-01T10:00:00.123Z",
    "customer_id": "c-1",
    "anonymous_id": "a-1",
    "session_id": "s-1",
    "order_id": "o-1",
    "total": 42.5,
    "currency": "EUR",
    "items": [{"product_id": "p-1", "category": "shoes", "price": 42.5, "quantity": 1}],
    "properties": {"channel": "web"},
}


def _dec(d: dict[str, Any]) -> Event | DecodeError:
    return decode_event(orjson.dumps(d))


def test_valid_purchase_decodes_with_all_fields() -> None:
    ev = _dec(VALID)
    assert isinstance(ev, Event)
    assert ev.ts == 1772359200123
    assert ev.customer_id == "c-1" and ev.key == "c:c-1"
    assert ev.items is not None and ev.items[0].product_id == "p-1"
    assert ev.total == 42.5 and ev.properties == {"channel": "web"}


def test_unknown_extra_fields_are_accepted() -> None:
    assert isinstance(_dec({**VALID, "utm_source": "newsletter"}), Event)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event_id": None}, "missing_field:event_id"),
        ({"type": None}, "missing_field:type"),
        ({"ts": None}, "missing_field:ts"),
        ({"type": "teleport"}, "unknown_type"),
        ({"ts": "2026-03-01 10:00"}, "bad_timestamp"),
        ({"ts": "2026-03-01T10:00:00"}, "bad_timestamp"),  # no zone
        ({"ts": -1234}, "bad_timestamp"),  # before 1970
        ({"ts": 1.5}, "bad_type:ts"),
        ({"customer_id": None, "anonymous_id": None}, "no_identity"),
        ({"customer_id": None}, "missing_field:customer_id"),  # purchase needs a customer
        ({"total": None}, "missing_field:total"),
        ({"customer_id": 7}, "bad_type:customer_id"),
        ({"price": "cheap"}, "bad_type:price"),
        ({"total": -1}, "bad_value:total"),
        ({"quantity": 0}, "bad_value:quantity"),
        ({"event_id": ""}, "bad_value:event_id"),
        ({"items": [{"price": 1}]}, "missing_field:items"),
        ({"items": "x"}, "bad_type:items"),
        ({"properties": {f"k{i}": i for i in range(100)}}, "too_large"),
        ({"properties": {"blob": "x" * MAX_EVENT_BYTES}}, "too_large"),
    ],
)
def test_rejections_have_machine_readable_reasons(change: dict[str, Any], reason: str) -> None:
    d = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    out = _dec(d)
    assert isinstance(out, DecodeError), out
    assert out.reason == reason
    assert out.reason in REASONS


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"[1,2]", "not_an_object"),
        (b"null", "not_an_object"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_non_objects(data: bytes, reason: str) -> None:
    out = decode_event(data)
    assert isinstance(out, DecodeError) and out.reason == reason


def test_feedback_needs_decision_and_action() -> None:
    base = {"event_id": "f", "type": "decision_outcome", "ts": 1772359200000, "customer_id": "c"}
    out = _dec(base)
    assert isinstance(out, DecodeError) and out.reason == "missing_field:decision_id"
    out = _dec({**base, "decision_id": "d", "action_id": "a"})
    assert isinstance(out, DecodeError) and out.reason == "missing_field:outcome"
    bad = _dec({**base, "decision_id": "d", "action_id": "a", "outcome": "purchase"})
    assert isinstance(bad, DecodeError) and bad.reason == "bad_value:outcome"
    neg = _dec({**base, "decision_id": "d", "action_id": "a", "outcome": "click", "value": -1})
    assert isinstance(neg, DecodeError) and neg.reason == "bad_value:value"
    for outcome in ("impression", "click", "conversion"):
        ok = _dec({**base, "decision_id": "d", "action_id": "a", "outcome": outcome, "value": 9.5})
        assert isinstance(ok, Event) and ok.outcome == outcome and ok.value == 9.5


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    out = decode_event(data)
    assert isinstance(out, Event | DecodeError)
    if isinstance(out, DecodeError):
        assert out.reason in REASONS


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(sorted(WIRE_FIELDS | {"extra"})),
    value=_json_values,
    drop=st.sets(st.sampled_from(sorted(VALID)), max_size=3),
    cut=st.integers(min_value=0, max_value=400),
)
def test_mutated_valid_events_never_raise(field: str, value: Any, drop: set[str], cut: int) -> None:
    d = {k: v for k, v in VALID.items() if k not in drop}
    d[field] = value
    raw = json.dumps(d).encode()
    for data in (raw, raw[:cut]):
        out = decode_event(data)
        assert isinstance(out, Event | DecodeError)
        if isinstance(out, DecodeError):
            assert out.reason in REASONS


@given(
    type_=st.sampled_from(sorted(EVENT_TYPES)),
    ts=st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999),
    ident=st.text(min_size=1, max_size=20),
)
def test_encode_decode_round_trip(type_: str, ts: int, ident: str) -> None:
    ev = Event(
        event_id="e",
        type=type_,
        ts=ts,
        customer_id=ident,
        total=1.0,
        decision_id="d",
        action_id="a",
        outcome="conversion",
        value=3.5,
        traits={"crm_id": "x", "vip": True},
        source="crm",
        purposes={"marketing": "withdrawn"} if type_ == "consent" else None,
    )
    assert decode_event(encode_event(ev)) == ev


def test_json_schema_files_match_the_structs() -> None:
    for name, text in rendered().items():
        path = OUT_DIR / name
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text() == text, f"{path} is stale: run `make schemas`"


def test_json_schema_covers_every_event_field() -> None:
    schema = event_schema()
    assert set(schema["properties"]) == set(Event.__struct_fields__)
    assert set(schema["properties"]["type"]["enum"]) == EVENT_TYPES
    assert json.loads((OUT_DIR / "event.json").read_text())["required"] == [
        "event_id",
        "type",
        "ts",
    ]


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        (0, True),  # 1970-01-01: legacy systems' history reaches back before 2000
        ("1995-06-01T12:00:00Z", True),
        ("1969-12-31T23:59:59.999Z", False),
        (-1, False),
        (4_102_444_799_999, True),
        (4_102_444_800_000, False),
    ],
)
def test_event_times_from_1970_on_are_accepted(ts: int | str, ok: bool) -> None:
    got = decode_event(orjson.dumps({"event_id": "e", "type": "page_view", "ts": ts,
                                     "customer_id": "c"}))  # fmt: skip
    assert isinstance(got, Event) == ok
    if not ok:
        assert isinstance(got, DecodeError) and got.reason == "bad_timestamp"

"""Event contract: decoder units and properties, JSON Schema kept in sync with the structs."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import REASONS, DecodeError, Event, decode_event, encode_event
from schemas.consent import PURPOSES, STATUSES
from schemas.events import (
    EVENT_TYPES,
    ID_FIELDS,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_ITEMS,
    MAX_TS_MS,
    WIRE_FIELDS,
)
from schemas.identifiers import UNSALTED
from schemas.jsonschema import (
    DATE_PATTERN,
    EMAIL_PATTERN,
    OUT_DIR,
    PHONE_PATTERN,
    TS_PATTERN,
    WHITESPACE,
    event_body,
    event_schema,
    rendered,
)
from schemas.timestamps import parse_ts
from schemas.traits import STANDARD_TRAITS

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


# --------------------------------------------------------------------------------------------
# The JSON Schema states exactly what the decoder accepts (POST /v1/events publishes it in the
# OpenAPI document; tests/test_openapi_fuzz.py holds the served route to it).


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern`` as ECMA-262 reads it: ``$`` is the end (Python's also matches before a final
    newline). The schema's patterns hold no literal ``$``."""
    if isinstance(instance, str) and not re.search(pattern.replace("$", r"\Z"), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)
EVENT = _Validator(event_schema())


def _valid(doc: Any) -> bool:
    return bool(EVENT.is_valid(doc))


def _accepted(doc: Any) -> bool:
    return isinstance(decode_event(json.dumps(doc).encode()), Event)


def test_the_whitespace_class_is_pythons() -> None:
    spaces = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert set(WHITESPACE) == spaces
    patterns = (TS_PATTERN, EMAIL_PATTERN, PHONE_PATTERN, DATE_PATTERN)
    assert all("\\$" not in p for p in patterns)  # every $ is an anchor (see _ecma_pattern)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(TS_PATTERN, fullmatch=True))
def test_every_ts_the_pattern_takes_parses(ts: str) -> None:
    assert parse_ts(ts) is not None, ts


_zones = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=300)
@given(
    st.datetimes(min_value=datetime(1969, 12, 30), max_value=datetime(2100, 1, 2), timezones=_zones)
)
def test_every_rfc3339_ts_the_decoder_takes_matches(dt: datetime) -> None:
    text = dt.isoformat()
    edge = ("1969-12-31", "1970-01-01", "2099-12-31", "2100-01-01")
    if text[:10] in edge and not text.endswith("+00:00"):
        return  # the documented edges: the schema takes them with Z, or an offset away from 2100
    assert bool(re.fullmatch(TS_PATTERN[1:-1], text)) == (parse_ts(text) is not None), text
    utc = dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert bool(re.fullmatch(TS_PATTERN[1:-1], utc)) == (parse_ts(utc) is not None), utc


@settings(max_examples=300)
@given(st.from_regex(DATE_PATTERN, fullmatch=True) | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))
def test_the_date_pattern_is_a_real_day(text: str) -> None:
    try:
        real = re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text) is not None and bool(
            date.fromisoformat(text)
        )
    except ValueError:
        real = False
    assert bool(re.fullmatch(DATE_PATTERN[1:-1], text)) == real, text


_email_chars = st.sampled_from(["a", "Z", "0", "@", ".", " ", "\t", "\u3000", "\u0130", "é", "+"])
_emails = (
    st.from_regex(EMAIL_PATTERN, fullmatch=True)
    | st.text(_email_chars, max_size=12)
    | st.builds(
        lambda a, b: f"{a}@{b}",
        st.text(_email_chars, max_size=5),
        st.text(_email_chars, max_size=6),
    )
    | st.sampled_from(["em:" + "0" * 32, "ph:" + "0" * 32, "em:" + "A" * 32, " em:" + "0" * 32])
)


@settings(max_examples=500)
@given(_emails)
def test_the_email_pattern_is_the_normaliser(raw: str) -> None:
    assert bool(re.fullmatch(EMAIL_PATTERN[1:-1], raw)) == (UNSALTED.email(raw) is not None)


_phone_chars = st.sampled_from(["0", "1", "9", "+", " ", "-", ".", "(", ")", "\xa0", "a", "/"])
_phones = (
    st.from_regex(PHONE_PATTERN, fullmatch=True)
    | st.text(_phone_chars, max_size=22)
    | st.sampled_from(["ph:" + "0" * 32, "em:" + "0" * 32])
)


@settings(max_examples=500)
@given(_phones)
def test_the_phone_pattern_is_the_normaliser(raw: str) -> None:
    assert bool(re.fullmatch(PHONE_PATTERN[1:-1], raw)) == (UNSALTED.phone(raw) is not None)


def test_email_length_counts_after_lower_casing() -> None:
    long = "a" * 240 + "@example.com"  # 252 characters
    assert _valid_email(long) and UNSALTED.email(long) is not None
    dotted = "\u0130" * 3 + long  # 255 characters once lower-cased: refused by both
    assert not _valid_email(dotted) and UNSALTED.email(dotted) is None


def _valid_email(raw: str) -> bool:
    return bool(re.fullmatch(EMAIL_PATTERN[1:-1], raw))


# Events near the rules' edges, valid or not: the schema and the decoder must agree on each.
_texts = st.text(max_size=6)
_ids = st.sampled_from(["", "x" * MAX_ID_LEN, "x" * (MAX_ID_LEN + 1)]) | st.text(
    min_size=1, max_size=6
)
_numbers = (
    st.sampled_from([0, -0.0, 1e9, 999_999_999.5, -1, 2.0, 10_000, 10_001, 2.5])
    | st.integers(-5, 20_000)
    | st.floats(-10, 2e9, allow_nan=False)
)
_ts_values = (
    st.integers(MAX_TS_MS - 2, MAX_TS_MS).map(float)
    | st.sampled_from([0, -1, MAX_TS_MS - 1, MAX_TS_MS, 1.5, 1767323045000.0, True, "yesterday"])
    | st.integers(0, MAX_TS_MS).map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat())
    | st.sampled_from(["2026-02-29T00:00:00Z", "2026-01-02T03:04:05", "2026-01-02T03:04:05z"])
)
_custom: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, 3, 2.5, 2**53, 2**53 - 1, -(2**53), "x" * 257, [1], {}]
)
_trait_names = st.sampled_from([*STANDARD_TRAITS, "vip", "Bad Name", "a" * 41, "x_1"])
_trait_values = (
    _custom
    | _emails
    | _phones
    | st.sampled_from(["FR", "fra", "1990-02-28", "1990-02-30", "gold", "x" * 256])
)
_traits = st.dictionaries(_trait_names, _trait_values, max_size=4) | st.builds(
    lambda n, std: {**{f"t{i}": 1 for i in range(n)}, **dict.fromkeys(std, None)},
    st.integers(30, 33),
    st.lists(st.sampled_from(STANDARD_TRAITS), max_size=1),
)
_purposes = st.dictionaries(st.sampled_from([*PURPOSES, "ads"]), st.sampled_from([*STATUSES, "x"]))
_items = st.lists(
    st.fixed_dictionaries(
        {"product_id": st.text(max_size=3) | st.just(None)},
        optional={"price": _numbers, "quantity": _numbers, "category": st.none() | _texts},
    ),
    max_size=3,
) | st.integers(MAX_ITEMS, MAX_ITEMS + 1).map(lambda n: [{"product_id": "p"}] * n)
_properties = st.dictionaries(st.text(max_size=4), st.integers() | _texts, max_size=3) | st.builds(
    lambda n: {f"k{i}": i for i in range(n)}, st.integers(63, 65)
)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(ID_FIELDS, _ids),
    "type": st.sampled_from([*sorted(EVENT_TYPES), "teleport"]),
    "ts": _ts_values,
    "properties": _properties,
    "category": _texts,
    "currency": _texts,
    "price": _numbers,
    "total": _numbers,
    "value": _numbers,
    "quantity": _numbers,
    "items": _items,
    "outcome": st.sampled_from(["click", "conversion", "purchase"]),
    "traits": _traits,
    "source": st.sampled_from(["crm", "CRM!", "web-1"]),
    "email": _emails,
    "phone": _phones,
    "purposes": _purposes,
}
assert set(_FIELDS) == WIRE_FIELDS


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_id": "e", "type": draw(st.sampled_from(sorted(EVENT_TYPES))),
                           "ts": "2026-01-02T03:04:05Z"}  # fmt: skip
    doc.update({"customer_id": "c", "total": 1, "decision_id": "d", "action_id": "a",
                "outcome": "click", "traits": {}, "source": "crm"})  # fmt: skip
    if doc["type"] == "consent":
        doc["purposes"] = {"marketing": "granted"}
    for name in draw(st.sets(st.sampled_from(sorted(WIRE_FIELDS)), max_size=3)):
        doc[name] = draw(st.none() | _FIELDS[name])  # a value, or null (the decoder: absent)
    for name in draw(st.sets(st.sampled_from(sorted(WIRE_FIELDS)), max_size=3)):
        doc.pop(name, None)
    return doc


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_events())
def test_the_schema_and_the_decoder_agree_on_events(doc: dict[str, Any]) -> None:
    assert _valid(doc) == _accepted(doc), (doc, decode_event(orjson.dumps(doc)))


def test_the_schema_refuses_some_traits_the_decoder_takes_never_the_reverse() -> None:
    """The documented edge of the custom-trait bound (see schemas.jsonschema._custom_count)."""
    base = {"event_id": "e", "type": "identify", "ts": 0, "customer_id": "c", "source": "crm"}
    custom = {f"t{i}": 1 for i in range(32)}
    one = {**base, "traits": {**custom, "crm_id": "x"}}
    two = {**base, "traits": {**custom, "crm_id": "x", "loyalty_tier": "gold"}}
    too_many = {**base, "traits": {**custom, "t32": 1}}
    assert _valid(one) and _accepted(one)
    assert not _valid(two) and _accepted(two)
    assert not _valid(too_many) and not _accepted(too_many)


def _schemathesis_events() -> st.SearchStrategy[Any]:
    import jsonschema_rs
    from schemathesis.generation.jsonschema.builder import build

    return build(event_body(), draft=jsonschema_rs.Draft202012, formats={}, whole_floats=True)


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.deferred(_schemathesis_events))
def test_every_event_schemathesis_draws_from_the_schema_is_accepted(doc: Any) -> None:
    """What the fuzzer of the served route draws (integers also spelled ``2.0``)."""
    assert _accepted(doc), (doc, decode_event(json.dumps(doc).encode()))

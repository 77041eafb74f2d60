"""JSON Schema files for producers, generated from the structs and rules of :mod:`schemas.events`.

``python -m schemas.jsonschema --write`` (or ``make schemas``) regenerates ``schemas/json/``;
``tests/test_schemas.py`` fails when the checked-in files drift from the structs, and checks that
the schema and :func:`schemas.events.decode_event` agree on generated events.

The schema states exactly what the decoder accepts, so that an event valid by the schema is
accepted and an invalid one rejected (``POST /v1/events`` publishes it in the OpenAPI document, and
a schema-driven fuzzer holds the served route to it). Every rule is built from the decoder's own
constants. What JSON Schema cannot say is in the schema's ``description``: the size of an event's
JSON (:data:`~schemas.events.MAX_EVENT_BYTES`), the nesting depth of ``properties``, and the
``future_timestamp`` rule of a collector (relative to its clock). Where the schema could only be
exact at a cost a generator cannot carry, it is stricter than the decoder, never more lenient (a
schema-valid event is always accepted); the decoder also takes: other ISO 8601 spellings of ``ts``
(a space for the ``T``, a ``+hhmm`` zone...); a local time near an end of the range whose zone
offset keeps it inside (``1970-01-01T05:00:00+01:00``); more than ``MAX_CUSTOM_TRAITS + 1``
traits when enough of them are standard ones (:func:`_custom_count`); an email of more than 127
characters holding a U+0130; and a custom trait's number of magnitude 2**53 or more written with a
fraction or an exponent.

Patterns use ``[0-9]`` (never ``\\d``, which matches other digits in Unicode), spell the
whitespace that Python's ``str.strip`` and ``\\s`` remove as a class of its own characters
(ECMA-262's ``\\s`` is another set), and are anchored ``^...$``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any, Final

from schemas.consent import CONSENT, PURPOSES, STATUSES
from schemas.events import (
    CLICKSTREAM_TYPES,
    EVENT_TYPES,
    FEEDBACK_TYPES,
    ID_FIELDS,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_ITEMS,
    MAX_PROPERTIES,
    MAX_PROPERTIES_DEPTH,
    MAX_TS_MS,
    MIN_TS_MS,
    OUTCOME_TYPES,
    TRANSACTION_TYPES,
    WIRE_FIELDS,
)
from schemas.identifiers import MAX_EMAIL_LEN, TOKEN_HEX
from schemas.traits import (
    IDENTIFY,
    MAX_CUSTOM_TRAITS,
    MAX_TRAIT_CHARS,
    SOURCE_RE,
    STANDARD_TRAITS,
    TRAIT_NAME_RE,
)

OUT_DIR = Path(__file__).parent / "json"

#: Bounds of ``price``, ``total``, ``value`` and an item's ``price``: ``[0, MAX_AMOUNT)``.
MAX_AMOUNT: Final = 1e9
#: Bounds of ``quantity`` (and an item's): ``[1, MAX_QUANTITY]``.
MAX_QUANTITY: Final = 10_000
#: A custom trait's integer is accepted below this magnitude.
MAX_TRAIT_INT: Final = 2**53

#: The characters Python's ``str.isspace`` (``str.strip``, ``re``'s ``\s``) calls whitespace
#: (a test checks the list against every code point).
WHITESPACE: Final = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_W: Final = f"[{WHITESPACE}]"
_NOT_W: Final = f"[^{WHITESPACE}]"

# ---- dates and times (the language of :func:`schemas.events.parse_ts` for RFC 3339 text) ------

#: Month and day of a year that is not a leap year.
MONTH_DAY: Final = (
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|(?:0[13578]|1[02])-31)"
)
#: Years 0001-9999, and the leap ones among them.
_YEAR_ANY: Final = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_ANY: Final = (
    r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
)
#: A real calendar day ``YYYY-MM-DD`` (what ``date.fromisoformat`` takes of that shape).
DATE_PATTERN: Final = rf"^(?:{_YEAR_ANY}-{MONTH_DAY}|{_LEAP_ANY}-02-29)$"

HH_MM: Final = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_CLOCK: Final = rf"T{HH_MM}:[0-5][0-9]"
# ``parse_ts`` reads at most 40 characters: up to 19 fractional digits with ``Z``, 14 with an
# offset.
_Z: Final = r"(?:\.[0-9]{1,19})?Z"
_OFFSET_ANY: Final = rf"(?:\.[0-9]{{1,14}})?[+-]{HH_MM}"
_ZONE_ANY: Final = rf"(?:{_Z}|{_OFFSET_ANY})"
# 1971-2098: any day, any zone (an offset is less than a day: it cannot leave the range).
MID_YEAR: Final = r"(?:197[1-9]|19[89][0-9]|20[0-8][0-9]|209[0-8])"
MID_LEAP: Final = r"(?:19(?:7[26]|8[048]|9[26])|20(?:[02468][048]|[13579][26]))"
_MID: Final = rf"(?:{MID_YEAR}-{MONTH_DAY}|{MID_LEAP}-02-29){_CLOCK}{_ZONE_ANY}"
# 1970 and 2099: their first and last day only with a zone that keeps it inside the range.
_FRAC14: Final = r"(?:\.[0-9]{1,14})?"
_EDGES: Final = (
    rf"1970-(?!01-01){MONTH_DAY}{_CLOCK}{_ZONE_ANY}"
    rf"|1970-01-01{_CLOCK}(?:{_Z}|{_FRAC14}(?:-{HH_MM}|\+00:00))"
    rf"|2099-(?!12-31){MONTH_DAY}{_CLOCK}{_ZONE_ANY}"
    rf"|2099-12-31{_CLOCK}(?:{_Z}|{_FRAC14}(?:\+{HH_MM}|-00:00))"
)
#: An event's ``ts`` as text: RFC 3339 with a zone, from 1970-01-01T00:00:00Z to before 2100,
#: with a real calendar day (``T`` and ``Z`` upper-case; fractions to 14 or 19 digits).
TS_PATTERN: Final = rf"^(?:{_MID}|{_EDGES})$"

# ---- identifiers (see :mod:`schemas.identifiers`) ------------------------------------------

_TOKEN_HEX: Final = f"[0-9a-f]{{{TOKEN_HEX}}}"
# Trimmed, lower-cased, then ``local@domain.tld`` of at most 254 characters. Lower-casing
# lengthens only U+0130 (two characters): a value holding it is bounded at half the length.
_EMAIL_CORE: Final = (
    rf"[^{WHITESPACE}@]+@[^{WHITESPACE}@.][^{WHITESPACE}@]*\.[^{WHITESPACE}@]*[^{WHITESPACE}@.]"
)
#: The one character whose lower case is two characters (U+0130, a dotted capital I).
_DOTTED_I: Final = "\u0130"
_EMAIL_LEN: Final = (
    rf"(?:(?=[^{WHITESPACE}{_DOTTED_I}]{{1,{MAX_EMAIL_LEN}}}{_W}*$)"
    rf"|(?={_NOT_W}{{1,{MAX_EMAIL_LEN // 2}}}{_W}*$))"
)
#: An email address as :meth:`IdentifierHasher.email` accepts it, or its token.
EMAIL_PATTERN: Final = rf"^(?:{_W}*{_EMAIL_LEN}{_EMAIL_CORE}{_W}*|em:{_TOKEN_HEX})$"
# Spaces, dashes, dots and parentheses are removed; a leading 00 becomes +; then + and 8-15 digits.
_JUNK: Final = f"[{WHITESPACE}().-]"
#: A phone number as :meth:`IdentifierHasher.phone` accepts it, or its token.
PHONE_PATTERN: Final = (
    rf"^(?:{_JUNK}*(?:\+|0{_JUNK}*0){_JUNK}*(?:[0-9]{_JUNK}*){{8,15}}|ph:{_TOKEN_HEX})$"
)

EMAIL_HELP: Final = (
    "An email address (trimmed, lower-cased: local@domain.tld, at most 254 characters), or its "
    f"token em:<{TOKEN_HEX} hex>; stored only as a salted hash."
)
PHONE_HELP: Final = (
    "A phone number: after removing spaces, dashes, dots and parentheses (a leading 00 becomes "
    f"+), + and 8 to 15 digits (E.164); or its token ph:<{TOKEN_HEX} hex>. Stored only as a "
    "salted hash."
)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field of the wire struct: ``null`` means absent.

    >>> _nullable({"type": "string", "maxLength": 3})
    {'anyOf': [{'type': 'null'}, {'type': 'string', 'maxLength': 3}]}
    """
    return {"anyOf": [{"type": "null"}, schema]}


def _amount() -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "exclusiveMaximum": MAX_AMOUNT}


def _quantity() -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY}


def _non_null(*names: str) -> dict[str, Any]:
    """Each field present and not ``null`` (the decoder reads ``null`` as missing)."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


#: Standard traits counted exactly by the schema's custom-trait bound (see :func:`_custom_count`).
_COUNTED_STANDARD: Final = 1


def _custom_count() -> dict[str, Any]:
    """At most :data:`MAX_CUSTOM_TRAITS` traits besides the standard ones. With ``k`` standard
    traits present that is at most ``MAX_CUSTOM_TRAITS + k`` in all: one branch per set of
    standard traits. Schemathesis models at most a few dozen branches, so the schema counts up
    to :data:`_COUNTED_STANDARD` of them: it refuses some traits the decoder takes (more than
    ``MAX_CUSTOM_TRAITS + 2`` in all, a third standard one among them), never the reverse."""
    branches: list[dict[str, Any]] = [{"maxProperties": MAX_CUSTOM_TRAITS}]
    branches += [
        {"required": list(names), "maxProperties": MAX_CUSTOM_TRAITS + k}
        for k in range(1, _COUNTED_STANDARD + 1)
        for names in itertools.combinations(STANDARD_TRAITS, k)
    ]
    return {"anyOf": branches}


def traits_schema() -> dict[str, Any]:
    """The ``traits`` object (see :mod:`schemas.traits`)."""
    text: dict[str, Any] = {"type": "string", "maxLength": MAX_TRAIT_CHARS}
    standard: dict[str, Any] = {n: _nullable(text) for n in STANDARD_TRAITS}
    standard["email"] = _nullable({**text, "pattern": EMAIL_PATTERN, "description": EMAIL_HELP})
    standard["phone"] = _nullable({**text, "pattern": PHONE_PATTERN, "description": PHONE_HELP})
    standard["country"] = _nullable({"type": "string", "pattern": "^[A-Za-z]{2}$"})
    standard["birthday"] = _nullable({"type": "string", "pattern": DATE_PATTERN})
    custom = {
        "anyOf": [
            {"type": ["null", "boolean"]},
            text,
            {"type": "integer", "minimum": 1 - MAX_TRAIT_INT, "maximum": MAX_TRAIT_INT - 1},
            {"type": "number", "not": {"type": "integer"}},
        ]
    }
    return {
        "type": "object",
        "description": "identify: the person's traits. Standard: email and phone (identifiers), "
        f"first_name, last_name, loyalty_tier, crm_id (at most {MAX_TRAIT_CHARS} characters), "
        "country (ISO 3166-1 alpha-2) and birthday (YYYY-MM-DD). At most "
        f"{MAX_CUSTOM_TRAITS} custom traits besides them, named {TRAIT_NAME_RE.pattern}: a "
        f"string of at most {MAX_TRAIT_CHARS} characters, a boolean, or a number (an integer "
        "of magnitude below 2**53). Any trait may be null.",
        "properties": standard,
        "propertyNames": {"pattern": f"^{TRAIT_NAME_RE.pattern}$"},
        "additionalProperties": custom,
        **_custom_count(),
    }


def _item_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "One line of a transaction.",
        "properties": {
            "product_id": {"type": "string"},
            "category": _nullable({"type": "string"}),
            "price": _amount(),
            "quantity": _quantity(),
        },
        "required": ["product_id"],
    }


def event_body() -> dict[str, Any]:
    """The event's schema without ``$schema``/``$id`` (to embed in another document, e.g. the
    OpenAPI document of ``POST /v1/events``)."""
    props: dict[str, Any] = {}
    for name in ID_FIELDS:
        props[name] = _nullable({"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN})
    props["event_id"] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}
    props["type"] = {"enum": sorted(EVENT_TYPES)}
    props["ts"] = {
        "description": "Event time: epoch milliseconds, or RFC 3339 with a zone; from "
        "1970-01-01T00:00:00Z to before 2100-01-01T00:00:00Z.",
        "anyOf": [
            {"type": "integer", "minimum": MIN_TS_MS, "maximum": MAX_TS_MS - 1},
            {"type": "string", "pattern": TS_PATTERN},
        ],
    }
    props["properties"] = _nullable(
        {
            "type": "object",
            "maxProperties": MAX_PROPERTIES,
            "description": "Free-form; nested at most "
            f"{MAX_PROPERTIES_DEPTH} levels deep (this object is the first).",
        }
    )
    for name in ("category", "currency"):
        props[name] = _nullable({"type": "string"})
    for name in ("price", "total", "value"):
        props[name] = _nullable(_amount())
    props["quantity"] = _nullable(_quantity())
    props["items"] = _nullable({"type": "array", "maxItems": MAX_ITEMS, "items": _item_schema()})
    props["outcome"] = _nullable({"type": "string"})
    props["traits"] = _nullable(traits_schema())
    props["source"] = _nullable({"type": "string", "pattern": f"^{SOURCE_RE.pattern}$"})
    props["email"] = _nullable(
        {
            "type": "string",
            "pattern": EMAIL_PATTERN,
            "description": EMAIL_HELP + " Resolves the event to its customer.",
        }
    )
    props["phone"] = _nullable(
        {
            "type": "string",
            "pattern": PHONE_PATTERN,
            "description": PHONE_HELP + " Resolves the event to its customer.",
        }
    )
    props["purposes"] = _nullable(
        {
            "type": "object",
            "description": f"{CONSENT} only (and required there): purpose -> "
            f"{' | '.join(STATUSES)}.",
            "minProperties": 1,
            "propertyNames": {"enum": list(PURPOSES)},
            "additionalProperties": {"enum": list(STATUSES)},
        }
    )
    assert set(props) == WIRE_FIELDS, set(props) ^ WIRE_FIELDS
    identity = [_non_null(n) for n in ("customer_id", "anonymous_id", "email", "phone")]
    identity.append(  # an identify's traits.email / traits.phone stand for its email / phone
        {
            "required": ["type", "traits"],
            "properties": {
                "type": {"const": "identify"},
                "traits": {"anyOf": [_non_null(n) for n in ("email", "phone")]},
            },
        }
    )
    return {
        "title": "nextbest event",
        "description": (
            f"One event per Kafka message or JSONL line. Clickstream types: "
            f"{', '.join(sorted(CLICKSTREAM_TYPES))}. Transaction types (customer_id and total "
            f"required): {', '.join(sorted(TRANSACTION_TYPES))}. Feedback types (decision_id, "
            f"action_id and outcome, one of {', '.join(OUTCOME_TYPES)}, required): "
            f"{', '.join(sorted(FEEDBACK_TYPES))}. Source-system types: {IDENTIFY} (traits and "
            f"source required), {CONSENT} (purposes required; only it carries them). Identity: "
            "customer_id, anonymous_id, email or phone (an identify's traits.email or "
            "traits.phone count). A null field is a missing one. Unknown extra fields are "
            "accepted. Beyond this schema: the event's "
            f"JSON is at most {MAX_EVENT_BYTES} bytes and properties nests at most "
            f"{MAX_PROPERTIES_DEPTH} levels (else too_large / bad_value:properties); a "
            "collector also rejects a ts too far ahead of its clock (future_timestamp, "
            "NEXTBEST_MAX_FUTURE)."
        ),
        "type": "object",
        "properties": props,
        "required": ["event_id", "type", "ts"],
        "anyOf": identity,
        "allOf": [
            {
                "if": {"required": ["type"], "properties": {"type": {"enum": sorted(types)}}},
                "then": _non_null(*fields),
            }
            for types, fields in (
                (TRANSACTION_TYPES, ("customer_id", "total")),
                (FEEDBACK_TYPES, ("decision_id", "action_id", "outcome")),
                ({IDENTIFY}, ("traits", "source")),
                ({CONSENT}, ("purposes",)),
            )
        ]
        + [
            {
                "if": {
                    "required": ["type"],
                    "properties": {"type": {"enum": sorted(FEEDBACK_TYPES)}},
                },
                "then": {"properties": {"outcome": {"enum": list(OUTCOME_TYPES)}}},
            },
            {  # purposes belong to a consent event only
                "if": {"required": ["type"], "properties": {"type": {"not": {"const": CONSENT}}}},
                "then": {"properties": {"purposes": {"type": "null"}}},
            },
        ],
    }


def event_schema() -> dict[str, Any]:
    """The event contract as JSON Schema (draft 2020-12)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nextbest.example/schemas/event.json",
        **event_body(),
    }


def rendered() -> dict[str, str]:
    """File name -> exact file text of every generated schema."""
    return {"event.json": json.dumps(event_schema(), indent=2, sort_keys=True) + "\n"}


def main() -> None:
    """Write (``--write``) or check the generated files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    OUT_DIR.mkdir(exist_ok=True)
    stale = []
    for name, text in rendered().items():
        path = OUT_DIR / name
        if args.write:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
    if stale:
        raise SystemExit(f"stale JSON Schema files: {stale}; run `make schemas`")


if __name__ == "__main__":
    main()

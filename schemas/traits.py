"""The ``identify`` event's ``traits`` and ``source``: what they may hold, checked at decode.

``traits`` is an object. Standard traits: ``email`` and ``phone`` (identifiers: normalised and
replaced with their token, see :mod:`schemas.identifiers`), ``first_name``, ``last_name``,
``loyalty_tier``, ``crm_id`` (strings of at most 256 characters), ``country`` (ISO 3166-1
alpha-2, upper-cased: ``fr`` becomes ``FR``) and ``birthday`` (``YYYY-MM-DD``, a real date).
Custom traits: at most 32 per event, names matching ``[a-z][a-z0-9_]{0,39}``, values a string
of at most 256 characters, a finite number or a boolean. Any trait may be ``null``: the source
says it has no value (it wins or loses like any value, see :mod:`features.traits`).

``source`` names the system that sent it: ``[a-z][a-z0-9_-]{0,31}`` (``crm``, ``erp``,
``shop``, ``web``, ``loyalty``...).

>>> from schemas.identifiers import UNSALTED
>>> t = check_traits({"country": "fr", "loyalty_tier": "gold", "vip": True}, UNSALTED)
>>> t
{'country': 'FR', 'loyalty_tier': 'gold', 'vip': True}
>>> check_traits({"birthday": "1990-02-30"}, UNSALTED)
('bad_value:traits', 'traits.birthday: expected a date YYYY-MM-DD')
>>> check_traits({"email": "nope"}, UNSALTED)
('bad_value:email', 'traits.email: not an email address (local@domain.tld)')
>>> check_traits({"Bad Name": 1}, UNSALTED)[0], check_traits({"x": [1]}, UNSALTED)[0]
('bad_value:traits', 'bad_value:traits')
>>> check_traits({f"t{i}": 1 for i in range(33)}, UNSALTED)[0]
'too_large'
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any, Final, NamedTuple

from schemas.identifiers import IdentifierHasher

#: The standard traits (the others are custom).
STANDARD_TRAITS: Final = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "country",
    "birthday",
    "loyalty_tier",
    "crm_id",
)
#: Identifier traits: kept as tokens, and they resolve events to their customer.
IDENTIFIER_TRAITS: Final = ("email", "phone")
#: Most custom traits in one event.
MAX_CUSTOM_TRAITS: Final = 32
#: Longest string value of a trait.
MAX_TRAIT_CHARS: Final = 256
TRAIT_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
SOURCE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_COUNTRY_RE: Final = re.compile(r"[A-Za-z]{2}")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

TraitScalar = str | int | float | bool | None
Problem = tuple[str, str]


def _is_date(v: str) -> bool:
    if not _DATE_RE.fullmatch(v):
        return False
    try:
        date.fromisoformat(v)
    except ValueError:
        return False
    return True


def _standard(name: str, v: Any, ids: IdentifierHasher) -> TraitScalar | Problem:
    where = f"traits.{name}"
    if not isinstance(v, str):
        return "bad_value:traits", f"{where}: expected a string or null"
    if len(v) > MAX_TRAIT_CHARS:
        return "bad_value:traits", f"{where}: longer than {MAX_TRAIT_CHARS} characters"
    if name == "email":
        tok = ids.email(v)
        return (
            tok if tok else ("bad_value:email", f"{where}: not an email address (local@domain.tld)")
        )
    if name == "phone":
        tok = ids.phone(v)
        return (
            tok if tok else ("bad_value:phone", f"{where}: not a phone number (+ and 8-15 digits)")
        )
    if name == "country":
        if not _COUNTRY_RE.fullmatch(v):
            return "bad_value:traits", f"{where}: expected an ISO 3166-1 alpha-2 code"
        return v.upper()
    if name == "birthday" and not _is_date(v):
        return "bad_value:traits", f"{where}: expected a date YYYY-MM-DD"
    return v


def _custom(name: str, v: Any) -> TraitScalar | Problem:
    where = f"traits.{name}"
    if not TRAIT_NAME_RE.fullmatch(name):
        return "bad_value:traits", f"trait name {name[:48]!r}: expected {TRAIT_NAME_RE.pattern}"
    if isinstance(v, str):
        if len(v) > MAX_TRAIT_CHARS:
            return "bad_value:traits", f"{where}: longer than {MAX_TRAIT_CHARS} characters"
        return v
    if isinstance(v, bool) or (isinstance(v, int) and abs(v) < 2**53):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return v
    return "bad_value:traits", f"{where}: expected a string, a finite number, a boolean or null"


def check_traits(raw: dict[str, Any], ids: IdentifierHasher) -> dict[str, TraitScalar] | Problem:
    """The traits, normalised (identifiers as tokens), or ``(reason, detail)``."""
    custom = sum(1 for k in raw if k not in STANDARD_TRAITS)
    if custom > MAX_CUSTOM_TRAITS:
        return "too_large", f"more than {MAX_CUSTOM_TRAITS} custom traits"
    out: dict[str, TraitScalar] = {}
    for name, v in raw.items():
        if v is None:
            if name not in STANDARD_TRAITS and not TRAIT_NAME_RE.fullmatch(name):
                return _custom(name, v)  # type: ignore[return-value]
            out[name] = None
            continue
        got = _standard(name, v, ids) if name in STANDARD_TRAITS else _custom(name, v)
        if isinstance(got, tuple):
            return got
        out[name] = got
    return out


IDENTIFY: Final = "identify"


class Fields(NamedTuple):
    """An event's checked ``traits``, ``source`` and identifier tokens."""

    traits: dict[str, TraitScalar] | None
    source: str | None
    email: str | None
    phone: str | None


def check_source_fields(
    typ: str,
    traits: dict[str, Any] | None,
    source: str | None,
    email: str | None,
    phone: str | None,
    ids: IdentifierHasher,
) -> Fields | Problem:
    """Validate an event's ``traits``, ``source``, ``email`` and ``phone``: an ``identify`` needs
    ``traits`` and ``source``; identifiers become tokens, and an ``identify``'s ``traits.email``
    / ``traits.phone`` also stand for the event's ``email`` / ``phone`` when it has none.

    >>> from schemas.identifiers import UNSALTED
    >>> t, s, e, p = check_source_fields("identify", {"email": "A@b.co"}, "crm", None, None,
    ...                                  UNSALTED)
    >>> s, e == t["email"] == UNSALTED.email("a@b.co"), p
    ('crm', True, None)
    >>> check_source_fields("identify", {}, "CRM!", None, None, UNSALTED)
    ('bad_value:source', 'source must match [a-z][a-z0-9_-]{0,31}')
    >>> check_source_fields("page_view", None, None, None, "12", UNSALTED)[0]
    'bad_value:phone'
    """
    if typ == IDENTIFY:
        if traits is None:
            return "missing_field:traits", "identify needs traits"
        if source is None:
            return "missing_field:source", "identify needs a source"
    if source is not None and not SOURCE_RE.fullmatch(source):
        return "bad_value:source", f"source must match {SOURCE_RE.pattern}"
    checked: dict[str, TraitScalar] | None = None
    if traits is not None:
        got = check_traits(traits, ids)
        if isinstance(got, tuple):
            return got
        checked = got
    etok = ptok = None
    if email is not None:
        etok = ids.email(email)
        if etok is None:
            return "bad_value:email", "not an email address (local@domain.tld)"
    if phone is not None:
        ptok = ids.phone(phone)
        if ptok is None:
            return "bad_value:phone", "not a phone number (+ and 8-15 digits, E.164)"
    if typ == IDENTIFY and checked is not None:
        e, p = checked.get("email"), checked.get("phone")
        etok = etok or (e if isinstance(e, str) else None)
        ptok = ptok or (p if isinstance(p, str) else None)
    return Fields(checked, source, etok, ptok)

"""Identifiers (``email``, ``phone``): normalised, then kept only as salted hashes (tokens).

An email or phone number arrives on any event (top-level ``email`` / ``phone``) or in an
``identify`` event's ``traits``. The decoder normalises it and replaces it with a *token*: an
HMAC-SHA256 of the normalised value under a secret salt (``NEXTBEST_IDENTITY_SALT``), written
``em:<32 hex>`` for an email and ``ph:<32 hex>`` for a phone (the first 128 bits of the HMAC).
The raw value never goes further than the decoder: not into the dataflow's state, Redis or the
recovery snapshots. A producer may also send a token it computed with the same salt; tokens pass
unchanged.

Email: trimmed, lower-cased, and it must look like ``local@domain.tld`` (one ``@``, no spaces, a
dot in the domain that is neither its first nor its last character), at most 254 characters.

>>> normalise_email("  Jane.Doe@Example.COM ")
'jane.doe@example.com'
>>> normalise_email("jane@example") is None, normalise_email("a b@x.io") is None
(True, True)

Phone (E.164, no default country): spaces, dashes, dots and parentheses are removed, a leading
``00`` becomes ``+``; then it must be ``+`` and 8 to 15 digits.

>>> normalise_phone("+44 (20) 7946-0958"), normalise_phone("0033 6.12.34.56.78")
('+442079460958', '+33612345678')
>>> normalise_phone("020 7946 0958") is None, normalise_phone("+1 555") is None
(True, True)

Tokens (the same value gives the same token under the same salt, whatever its spelling):

>>> h = IdentifierHasher(b"salt")
>>> h.email(" Jane@Example.com") == h.email("jane@example.com"), h.email("jane@example.com")[:3]
(True, 'em:')
>>> h.email(h.email("jane@example.com")) == h.email("jane@example.com")    # a token passes
True
>>> h.phone("not a phone") is None
True
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Final

import orjson

EMAIL_PREFIX: Final = "em:"
PHONE_PREFIX: Final = "ph:"
#: Hex characters of a token's hash (128 bits).
TOKEN_HEX: Final = 32
MAX_EMAIL_LEN: Final = 254
_EMAIL_RE: Final = re.compile(r"[^\s@]+@[^\s@.][^\s@]*\.[^\s@]*[^\s@.]")
_PHONE_JUNK: Final = re.compile(r"[\s\-.()]")
_PHONE_RE: Final = re.compile(r"\+[0-9]{8,15}")
_TOKEN_RE: Final = re.compile(r"(em|ph):[0-9a-f]{32}")
#: What a rejected record's identifiers are replaced with in its dead letter.
REDACTED: Final = "<redacted>"


def normalise_email(raw: str) -> str | None:
    """The canonical form of an email address, or ``None`` when it is not one."""
    v = raw.strip().lower()
    if len(v) > MAX_EMAIL_LEN or not _EMAIL_RE.fullmatch(v):
        return None
    return v


def normalise_phone(raw: str) -> str | None:
    """The E.164 form of a phone number, or ``None`` when it is not one."""
    v = _PHONE_JUNK.sub("", raw)
    if v.startswith("00"):
        v = "+" + v[2:]
    return v if _PHONE_RE.fullmatch(v) else None


def is_token(value: str) -> bool:
    """Whether a value is already a token (``em:``/``ph:`` + 32 lower-case hex).

    >>> is_token("em:" + "0" * 32), is_token("jane@example.com")
    (True, False)
    """
    return _TOKEN_RE.fullmatch(value) is not None


def kind_of(token: str) -> str:
    """``email`` or ``phone``: the kind of identifier a token stands for.

    >>> kind_of("ph:" + "0" * 32)
    'phone'
    """
    return "email" if token.startswith(EMAIL_PREFIX) else "phone"


class IdentifierHasher:
    """Normalise and hash identifiers with one salt (HMAC-SHA256). Its ``repr`` hides the salt."""

    __slots__ = ("_key",)

    def __init__(self, salt: bytes) -> None:
        self._key = salt

    def __repr__(self) -> str:
        return "IdentifierHasher(<salt>)"

    def _token(self, prefix: str, value: str) -> str:
        mac = hmac.new(self._key, f"{prefix}{value}".encode(), hashlib.sha256)
        return prefix + mac.hexdigest()[:TOKEN_HEX]

    def email(self, raw: str) -> str | None:
        """The token of an email address (a token passes if it is an email's), or ``None``."""
        if is_token(raw):
            return raw if raw.startswith(EMAIL_PREFIX) else None
        v = normalise_email(raw)
        return None if v is None else self._token(EMAIL_PREFIX, v)

    def phone(self, raw: str) -> str | None:
        """The token of a phone number (a token passes if it is a phone's), or ``None``."""
        if is_token(raw):
            return raw if raw.startswith(PHONE_PREFIX) else None
        v = normalise_phone(raw)
        return None if v is None else self._token(PHONE_PREFIX, v)


#: The hasher of tests and doctests, and of code paths given no salt: a fixed, public salt.
#: Every path that reads real input (the dataflow, ``POST /v1/events``, ``import-traits``) is
#: given the configured one (``NEXTBEST_IDENTITY_SALT``, see :mod:`nextbest.settings`).
UNSALTED: Final = IdentifierHasher(b"nextbest-unsalted")

_IDENT_KEYS: Final = ("email", "phone")


def redact(data: bytes) -> bytes:
    """A rejected record's bytes with its identifiers replaced by :data:`REDACTED` (top-level
    ``email``/``phone`` and those of ``traits``), so dead letters keep no raw identifier; bytes
    that do not parse as a JSON object, or carry none, are returned as they are.

    >>> redact(b'{"type":"identify","email":"a@b.co","traits":{"phone":"+4479460958"}}')
    b'{"type":"identify","email":"<redacted>","traits":{"phone":"<redacted>"}}'
    >>> redact(b'{"email":') == b'{"email":'
    True
    """
    if b'"email"' not in data and b'"phone"' not in data:
        return data
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(doc, dict):
        return data
    changed = False
    for where in (doc, doc.get("traits")):
        if isinstance(where, dict):
            for k in _IDENT_KEYS:
                if k in where and where[k] is not None:
                    where[k] = REDACTED
                    changed = True
    return orjson.dumps(doc) if changed else data

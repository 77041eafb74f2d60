"""``python -m bench.fuzz``: a long fuzz run of the event decoder and of the HTTP API.

It pushes random and mutated inputs through two targets and counts what goes wrong.

``decoder``
    :func:`schemas.events.decode_event` on bytes (and some ``str``, ``bytearray`` and
    ``memoryview`` inputs). Every bytes input also goes through
    :func:`dataflows.records.decode_record`, and every rejection through
    :func:`dataflows.records.encode_dead_letter`, whose line must give back the reason and the
    exact bytes (or, when it says it is truncated, a prefix with the size and SHA-256).
``http``
    the FastAPI app of :mod:`serving.app`, called in-process as an ASGI application (the scope
    is built as uvicorn builds it from a request line), with its lifespan running, against a
    real Redis started in a temporary directory and seeded with a few profiles: the profile
    routes with fuzzed path ids and ``as_of`` values, unknown routes, wrong methods, request
    bodies, odd headers and query strings. Routes are read from the app's OpenAPI document, so a
    route added later (with a request body, say) is fuzzed too.

An **exception** is anything a target raises; for ``http`` also any 5xx answer and any request
slower than :data:`REQUEST_TIMEOUT`. Exceptions must be 0. A **violation** is an answer that broke
a contract without raising: a reason outside ``REASONS``, a dead letter that loses bytes, an
accepted event that breaks the event contract (README, "Event contract") or cannot be pickled
(Bytewax pickles events between workers and in recovery snapshots), a valid line or request not
accepted, an error body not shaped ``{"error": ..., "detail": ...}``. The first
:data:`MAX_SAVED` failures of each target are written to a JSONL file (inputs base64-encoded).

Strategies (weights in :data:`DECODER_STRATEGIES` and :data:`HTTP_STRATEGIES`): random bytes
(0..64 KiB, log-uniform, sometimes 1 MiB), JSON-token noise, valid simulator lines and
equivalent rewritings of them, bit flips, byte inserts/deletes/replacements, splices of two
events, truncations, field type swaps (numbers as strings, arrays, nulls, 10**40, NaN/Infinity
text, negative and far-future timestamps), unicode damage (control characters, escaped lone
surrogates, invalid UTF-8, overlong sequences, BOM, UTF-16), deep nesting (up to 20,000
levels), duplicated keys, long strings (also sized to the 16 KiB limit +-1), contract
boundaries, structured random events, empty and whitespace-only input.

Same ``--seed``, same inputs and same counts. The exit code is 1 if anything failed, else 0.

>>> check_decoded(b'{"event_id":"e","type":"login","ts":1767323045000,"customer_id":"c"}')
'accepted'
>>> check_decoded(b"")
'invalid_json'
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import logging
import os
import pickle
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from random import Random
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

import orjson
from starlette.types import ASGIApp, Message, Scope

from dataflows.records import In, RawRecord, Rejected, decode_record, encode_dead_letter
from schemas.events import (
    EVENT_TYPES,
    FEEDBACK_TYPES,
    ID_FIELDS,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_ITEMS,
    MAX_PROPERTIES,
    MAX_TS_MS,
    MIN_TS_MS,
    OUTCOME_TYPES,
    REASONS,
    SOURCE_TYPES,
    TRANSACTION_TYPES,
    WIRE_FIELDS,
    DecodeError,
    Event,
    Item,
    decode_event,
    format_ts,
)
from schemas.identifiers import is_token, redact

log = logging.getLogger("bench.fuzz")

#: Defaults of a full run (about 3.5 minutes on 2 idle cores: the decoder ~1 min, http ~2.5).
DEFAULT_DECODER: Final = 1_000_000
DEFAULT_HTTP: Final = 150_000
#: Failures kept (with their inputs) per target.
MAX_SAVED: Final = 20
#: Requests in flight at once (they share one event loop, as in one uvicorn worker).
CONCURRENCY: Final = 16
#: A request slower than this (seconds) counts as an exception.
REQUEST_TIMEOUT: Final = 10.0
#: Lateness used when seeding profiles.
LATENESS_MS: Final = 600_000

Data = bytes | bytearray | memoryview | str
T = TypeVar("T")
F = TypeVar("F")


class Violation(Exception):
    """A target answered without raising but broke a contract (``kind`` names which)."""

    def __init__(self, kind: str, detail: str, outcome: str = "violation") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.outcome = outcome


class ServerError(Exception):
    """The API answered 5xx (or did not answer in time)."""


# ---------------------------------------------------------------------------------------------
# tallies


@dataclass
class Failure:
    """One failing input: where, what went wrong, and the input itself."""

    target: str
    strategy: str
    index: int
    kind: str
    error: str
    input: dict[str, Any]


@dataclass
class Tally:
    """What one target did with its inputs."""

    target: str
    inputs: int = 0
    seconds: float = 0.0
    strategies: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    exceptions: int = 0
    signatures: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)

    def ok(self, strategy: str, outcome: str) -> None:
        """Count an input the target handled."""
        self.inputs += 1
        self.strategies[strategy] += 1
        self.outcomes[outcome] += 1

    def failed(
        self,
        strategy: str,
        index: int,
        exc: BaseException,
        describe: Callable[[T], dict[str, Any]],
        data: T,
    ) -> None:
        """Count a failing input; keep it (``describe(data)``) if fewer than MAX_SAVED are."""
        self.inputs += 1
        self.strategies[strategy] += 1
        if isinstance(exc, Violation):
            kind = exc.kind
            self.violations[kind] += 1
            self.outcomes[exc.outcome] += 1
        else:
            kind = "exception"
            self.exceptions += 1
            self.signatures[signature(exc)] += 1
            self.outcomes["exception"] += 1
        if len(self.failures) < MAX_SAVED:
            error = "".join(traceback.format_exception(exc, limit=-6))[-4000:]
            self.failures.append(Failure(self.target, strategy, index, kind, error, describe(data)))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the saved inputs)."""
        return {
            "inputs": self.inputs,
            "seconds": round(self.seconds, 3),
            "inputs_per_s": round(self.inputs / self.seconds, 1) if self.seconds > 0 else 0.0,
            "exceptions": self.exceptions,
            "exception_signatures": dict(self.signatures.most_common()),
            "violations": dict(sorted(self.violations.items())),
            "strategies": dict(sorted(self.strategies.items())),
            "outcomes": dict(self.outcomes.most_common()),
            "failures_saved": len(self.failures),
        }


def signature(exc: BaseException) -> str:
    """An exception's type and the innermost function it came from (groups a bug's failures).

    >>> try:
    ...     1 / 0
    ... except ZeroDivisionError as exc:
    ...     signature(exc)
    'ZeroDivisionError in <doctest bench.fuzz.signature[0]>:<module>'
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    return f"{type(exc).__name__} in {Path(frames[-1].filename).name}:{frames[-1].name}"


def _picker(table: Sequence[tuple[str, int, F]]) -> Callable[[Random], tuple[str, F]]:
    """A weighted random choice of ``(name, strategy)`` from ``(name, weight, strategy)`` rows."""
    rows = [(name, fn) for name, _, fn in table]
    cum = list(accumulate(weight for _, weight, _ in table))

    def pick(rng: Random) -> tuple[str, F]:
        return rng.choices(rows, cum_weights=cum)[0]

    return pick


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def describe_data(data: Data) -> dict[str, Any]:
    """A decoder input as JSON: its Python type, length, a preview, and base64 of its bytes."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    return {
        "type": type(data).__name__,
        "length": len(data),
        "preview": repr(raw[:300]),
        "base64": _b64(raw),
    }


# ---------------------------------------------------------------------------------------------
# the decoder target


def _id_ok(v: str | None) -> bool:
    return v is None or 0 < len(v) <= MAX_ID_LEN


def _items_ok(items: list[Item] | None) -> bool:
    if items is None:
        return True
    return len(items) <= MAX_ITEMS and all(
        0.0 <= it.price < 1e9 and 0 < it.quantity <= 10_000 for it in items
    )


def contract_breach(ev: Event, size: int) -> str | None:
    """Why an accepted event breaks the event contract (README, "Event contract"), or ``None``.

    >>> contract_breach(Event(event_id="e", type="login", ts=MIN_TS_MS, customer_id="c"), 10)
    >>> contract_breach(Event(event_id="e", type="refund", ts=MIN_TS_MS, customer_id="c"), 10)
    'a transaction without customer_id or total'
    """
    checks = (
        (size <= MAX_EVENT_BYTES, f"larger than {MAX_EVENT_BYTES} bytes"),
        (ev.type in EVENT_TYPES, "unknown type"),
        (type(ev.ts) is int and MIN_TS_MS <= ev.ts < MAX_TS_MS, "ts out of bounds"),
        (
            any(v is not None for v in (ev.customer_id, ev.anonymous_id, ev.email, ev.phone)),
            "no identity",
        ),
        (
            all(v is None or is_token(v) for v in (ev.email, ev.phone)),
            "a raw (unhashed) identifier",
        ),
        (
            ev.type not in SOURCE_TYPES or (ev.traits is not None and ev.source is not None),
            "identify without traits or source",
        ),
        (all(_id_ok(getattr(ev, n)) for n in ID_FIELDS), "an empty or too long id"),
        (ev.properties is None or len(ev.properties) <= MAX_PROPERTIES, "too many properties"),
        (
            all(v is None or 0.0 <= v < 1e9 for v in (ev.price, ev.total, ev.value)),
            "price, total or value range",
        ),
        (ev.quantity is None or 0 < ev.quantity <= 10_000, "quantity range"),
        (
            ev.type not in TRANSACTION_TYPES or (ev.customer_id and ev.total is not None),
            "a transaction without customer_id or total",
        ),
        (_items_ok(ev.items), "items"),
        (
            ev.type not in FEEDBACK_TYPES
            or (ev.decision_id and ev.action_id and ev.outcome in OUTCOME_TYPES),
            "decision feedback without decision_id, action_id or a known outcome",
        ),
    )
    return next((why for good, why in checks if not good), None)


def _check_accepted(ev: Event, data: Data) -> None:
    breach = contract_breach(ev, len(data))
    if breach is not None:
        raise Violation("accepted_invalid", breach, "accepted")
    if not isinstance(data, bytes):
        return
    routed = decode_record(RawRecord(data, "fuzz:0"))
    if not isinstance(routed, In) or routed.event != ev:
        raise Violation("record_mismatch", f"decode_record gave {routed!r:.200}", "accepted")
    try:
        pickle.dumps(routed)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise Violation("unpicklable_event", why, "accepted") from exc


def dead_letter_loss(line: bytes, reason: str, data: bytes) -> str | None:
    """What a dead-letter line lost of a rejected input, or ``None``: its reason and bytes must
    come back, whole or (when it says ``truncated``) as a prefix with the size and SHA-256."""
    doc = orjson.loads(line)
    raw = doc["data"].encode() if "data" in doc else base64.b64decode(doc["data_base64"])
    if doc["reason"] != reason:
        return f"reason {doc['reason']!r}"
    if doc.get("truncated") is True:
        whole = (doc["original_size"], doc["sha256"])
        if not data.startswith(raw) or whole != (len(data), hashlib.sha256(data).hexdigest()):
            return f"a truncated record of {len(raw)} bytes that does not describe the input"
    elif raw != data:
        return f"{len(raw)} bytes instead of {len(data)}"
    return None


def _check_rejected(err: DecodeError, data: bytes) -> None:
    rej = decode_record(RawRecord(data, "fuzz:0"))
    if not isinstance(rej, Rejected) or rej.error != err:
        raise Violation("record_mismatch", f"decode_record gave {rej!r:.200}", err.reason)
    line = encode_dead_letter(rej)
    try:
        # (identifiers are redacted from dead letters: schemas.identifiers.redact)
        loss = dead_letter_loss(line, err.reason, redact(data))
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise Violation("dead_letter_invalid", why, err.reason) from exc
    if loss is not None:
        raise Violation("dead_letter_lossy", loss, err.reason)


def check_decoded(data: Data) -> str:
    """Run one input through the decoder target; the outcome (``accepted`` or the reason).

    Raises whatever the target raises, or :class:`Violation`.
    """
    out = decode_event(data)
    if isinstance(out, Event):
        _check_accepted(out, data)
        return "accepted"
    if not isinstance(out, DecodeError):
        raise Violation("bad_return", f"decode_event returned {type(out).__name__}")
    if out.reason not in REASONS:
        raise Violation("unknown_reason", out.reason, out.reason)
    if isinstance(data, bytes):
        _check_rejected(out, data)
    return out.reason


# ---------------------------------------------------------------------------------------------
# decoder inputs

Pairs = tuple[tuple[bytes, bytes], ...]

#: Valid events of the types the simulator rarely or never writes.
TEMPLATES: Final = (
    b'{"event_id":"t-1","type":"decision_outcome","ts":"2026-01-02T03:04:05Z","customer_id":"c-1",'
    b'"decision_id":"d-1","action_id":"a-1","outcome":"click","value":12.5}',
    b'{"event_id":"t-2","type":"refund","ts":1767323045000,"customer_id":"c-1","order_id":"o-1",'
    b'"total":9.5,"currency":"EUR","items":[{"product_id":"p-1","category":"books","price":9.5,'
    b'"quantity":1}]}',
    b'{"event_id":"t-3","type":"login","ts":"2026-01-02T04:04:05+01:00","customer_id":"c-1",'
    b'"anonymous_id":"a-1","session_id":"s-1"}',
    b'{"event_id":"t-4","type":"identify","ts":1767323045000,"customer_id":"c-1","source":"crm",'
    b'"traits":{"email":"Jane@Example.com","phone":"+44 20 7946 0958","country":"fr",'
    b'"birthday":"1990-02-28","loyalty_tier":"gold","vip":true,"points":12}}',
    b'{"event_id":"t-5","type":"page_view","ts":1767323045000,"email":"jane@example.com"}',
)


@dataclass(frozen=True)
class Corpus:
    """Valid event lines to mutate, and each as ``(raw key, raw value)`` pairs."""

    lines: tuple[bytes, ...]
    pairs: tuple[Pairs, ...]


def _raw_pairs(line: bytes) -> Pairs:
    return tuple((orjson.dumps(k), orjson.dumps(v)) for k, v in orjson.loads(line).items())


def build_corpus(seed: int, customers: int = 150, days: int = 14) -> Corpus:
    """Valid lines from the simulator (same seed, same lines) plus :data:`TEMPLATES`."""
    from nextbest.simulator import SimConfig, generate

    lines = (*generate(SimConfig(customers=customers, days=days, seed=seed)), *TEMPLATES)
    return Corpus(lines, tuple(_raw_pairs(line) for line in lines))


def render(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A JSON object from raw key and value texts (kept as given: duplicates, invalid bytes).

    >>> render([(b'"a"', b"1"), (b'"a"', b"NaN")])
    b'{"a":1,"a":NaN}'
    """
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


def _set(pairs: list[tuple[bytes, bytes]], key: bytes, value: bytes) -> None:
    for i, (k, _) in enumerate(pairs):
        if k == key:
            pairs[i] = (key, value)
            return
    pairs.append((key, value))


def _key(name: str) -> bytes:
    return b'"' + name.encode() + b'"'


WIRE_NAMES: Final = tuple(sorted(WIRE_FIELDS))
TYPE_NAMES: Final = tuple(sorted(EVENT_TYPES))

#: Raw JSON values that stress types and ranges.
NASTY_VALUES: Final[tuple[bytes, ...]] = (
    *(b"null", b"true", b"false", b"0", b"-0", b"-1", b"1", b"0.5", b"-0.0", b"1e-400"),
    *(b"1e400", b"-1e400", b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"inf"),
    str(10**40).encode(),
    str(-(10**40)).encode(),
    *(b"18446744073709551616", b"9223372036854775808", b"-9223372036854775809"),
    *(b"9223372036854775807", b"1767323045000", b'"1767323045000"', b"1767323045000.0"),
    *(b"1.767323045e12", b"-1767323045000", b"946684799999", b"946684800000"),
    *(b"4102444799999", b"4102444800000", b"253402300800000", b"32503680000000"),
    *(b'"2026-01-02T03:04:05Z"', b'"2026-01-02T03:04:05"', b'"9999-12-31T23:59:59-23:59"'),
    *(b'"0001-01-01T00:00:00+23:59"', b'"2026-01-02T03:04:60Z"', b'"1969-12-31T23:59:59Z"'),
    *(b'"2100-01-01T00:00:00Z"', b'"2099-12-31T23:59:59.999999Z"', b'"+2026-01-02T03:04Z"'),
    *(b'""', b'" "', b'"x"', b'"\\u0000"', b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\udc00"'),
    *(b'"\\ud83d\\ude00"', b'"\\uffff"', b"[]", b"{}", b"[null]", b'[{"product_id":"p"}]'),
    *(b"[{}]", b'{"":null}', b"[1767323045000]", b'"page_view"', b'"purchase"'),
    *(b'"decision_outcome"', b'"PAGE_VIEW"', b"01", b"+1", b".5", b"1.", b"1e", b"0x10"),
    *(b"--1", b'"\x00"', b'"\x1f"', b'"\xff"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b""),
    b'"' + b"x" * MAX_ID_LEN + b'"',
    b'"' + b"x" * (MAX_ID_LEN + 1) + b'"',
)

#: Bytes inserted into strings: control characters, escapes, invalid and overlong UTF-8.
UNICODE_BITS: Final[tuple[bytes, ...]] = (
    *(b"\x00", b"\x01", b"\x1f", b"\x7f", b"\\u0000", b"\\u001f", b"\\ud800", b"\\udbff"),
    *(b"\\udc00", b"\\ud800\\u0041", b"\\ud800\\ud800", b"\\uDFFF", b"\\u", b"\\u12", b"\\x41"),
    *(b"\\", b"\xff", b"\xfe", b"\xc3", b"\xc3\x28", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf"),
    *(b"\xc1\xbf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xf8\x88\x80\x80\x80", b"\xed\xa0\x80"),
    *(b"\xed\xbf\xbf", b"\xef\xbb\xbf", b"\xef\xbf\xbe", b"\xef\xbf\xbf", b"\xf4\x90\x80\x80"),
    *(b"\xe2\x80\xa8", b"\xe2\x80\xae", b"\xcc\x81" * 50, b"\xf0\x9f\x98\x80", b"\xc2\xa0"),
)

#: Whole-line damage: byte order marks, other encodings, stray bytes around the object.
LINE_TRANSFORMS: Final[tuple[Callable[[bytes], bytes], ...]] = (
    lambda b: b"\xef\xbb\xbf" + b,
    lambda b: b.decode("utf-8").encode("utf-16"),
    lambda b: b.decode("utf-8").encode("utf-16-be"),
    lambda b: b.decode("utf-8").encode("utf-32"),
    lambda b: b + b"\x00",
    lambda b: b"\x00" + b,
    lambda b: b + b"\r\n",
    lambda b: b"\n\t " + b,
    lambda b: b + b"}",
    lambda b: b + b"{}",
    lambda b: b + b" x",
    lambda b: b + b"\x1a",
)

#: Raw JSON values of the contract's boundaries, per field.
BOUNDS: Final[tuple[tuple[bytes, bytes], ...]] = (
    *((b'"quantity"', v) for v in (b"0", b"1", b"10000", b"10001", b"-1", b"1.0", b"true")),
    *((b'"price"', v) for v in (b"-0.0", b"0", b"999999999.9999999", b"1e9", b"-1e-300")),
    *((b'"total"', v) for v in (b"-0.0", b"0", b"999999999.99", b"1000000000", b"-0.01")),
    *((b'"ts"', v) for v in (b"-1", b"0", b"946684799999", b"4102444799999")),
    *((b'"ts"', v) for v in (b"4102444800000", b'"1969-12-31T23:59:59.999Z"', b"true")),
    *((b'"ts"', v) for v in (b'"1970-01-01T00:00:00Z"', b'"1999-12-31T23:59:59.999Z"')),
    *((b'"ts"', v) for v in (b'"2099-12-31T23:59:59.999Z"',)),
    *((b'"ts"', v) for v in (b'"2100-01-01T00:00:00Z"', b'"2100-01-01T00:59:59+01:00"')),
    *((b'"ts"', v) for v in (b'"2026-01-02T03:04:05\\u0000Z"', b'"2026-W01-1T00:00Z"')),
    *((_key(n), b'"' + b"x" * k + b'"') for n in ID_FIELDS for k in (0, 128, 129)),
)

JSON_TOKENS: Final[tuple[bytes, ...]] = (
    *(b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\n", b"null", b"true", b"false", b"0"),
    *(b"-", b"1", b"e", b"E", b"+", b".", b"9" * 30, b"\\", b"\\u", b"d800", b'"event_id"'),
    *(b'"type"', b'"ts"', b'"customer_id"', b'"anonymous_id"', b'"properties"', b'"items"'),
    *(b'"page_view"', b'"purchase"', b"1767323045000", b"\x00", b"\xff"),
)
INTERESTING_BYTES: Final = b'"\\{}[]:,09.-+eE \x00\x1f\x7f\x80\xbf\xc0\xed\xef\xff\n\t'
BLANKS: Final = (b"", b" ", b"\n", b"\r\n", b"\t", b"\x0b", b"\x0c", b"\xc2\xa0", b"\xe3\x80\x80")
NEST: Final = ((b"[", b"]"), (b'{"a":', b"}"), (b'{"":', b"}"), (b'[{"k":', b"}]"))
DEPTHS: Final = (254, 255, 256, 499, 500, 501, 998, 999, 1000, 1001, 5000, 8191, 10_000, 20_000)
LENGTHS: Final = (0, 1, 127, 128, 129, 255, 1000, 4096, 16_000, 16_384, 70_000, 1 << 20)
STRING_UNITS: Final = (b"x", b"\xc3\xa9", b"\\u00e9", b"\xf0\x9f\x98\x80", b"\\\\", b'\\"')

DecoderStrategy = Callable[[Random, Corpus], Data]


def _doc(rng: Random, c: Corpus) -> list[tuple[bytes, bytes]]:
    return list(rng.choice(c.pairs))


def s_random_bytes(rng: Random, c: Corpus) -> Data:
    """Random bytes, 0..64 KiB (log-uniform), 1 MiB once in 500."""
    n = 1 << 20 if rng.random() < 0.002 else int(2.0 ** rng.uniform(0.0, 16.0)) - 1
    return rng.randbytes(n)


def s_json_noise(rng: Random, c: Corpus) -> Data:
    """A random sequence of JSON tokens and event field names, often opened as an object."""
    head = b"{" if rng.random() < 0.5 else b""
    return head + b"".join(rng.choices(JSON_TOKENS, k=int(2.0 ** rng.uniform(0.0, 9.0))))


def s_valid(rng: Random, c: Corpus) -> Data:
    """A valid line as is (must be accepted)."""
    return rng.choice(c.lines)


def _escape_first_letters(line: bytes) -> bytes:
    return re.sub(rb'"([a-z])', lambda m: b'"\\u%04x' % m.group(1)[0], line)


def s_equivalent(rng: Random, c: Corpus) -> Data:
    """A valid line rewritten to the same JSON: \\u-escaped letters or indentation."""
    line = rng.choice(c.lines)
    if rng.random() < 0.5:
        return _escape_first_letters(line)
    return orjson.dumps(orjson.loads(line), option=orjson.OPT_INDENT_2)


def s_bit_flip(rng: Random, c: Corpus) -> Data:
    """One to eight random bit flips in a valid line."""
    b = bytearray(rng.choice(c.lines))
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def s_byte_edit(rng: Random, c: Corpus) -> Data:
    """One to four byte inserts, deletes or replacements (mostly JSON-significant bytes)."""
    b = bytearray(rng.choice(c.lines))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        byte = rng.choice(INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
        op = rng.random()
        if op < 0.4:
            b.insert(i, byte)
        elif op < 0.7 and len(b) > 1:
            del b[i]
        else:
            b[i] = byte
    return bytes(b)


def s_splice(rng: Random, c: Corpus) -> Data:
    """The head of one valid line and the tail of another."""
    a, b = rng.choice(c.lines), rng.choice(c.lines)
    return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]


def s_truncate(rng: Random, c: Corpus) -> Data:
    """A valid line cut short."""
    line = rng.choice(c.lines)
    return line[: rng.randrange(len(line))]


def s_type_swap(rng: Random, c: Corpus) -> Data:
    """One or a few fields (present or not) set to a value of the wrong type or range."""
    pairs = _doc(rng, c)
    for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 4)):
        key = _key(rng.choice(WIRE_NAMES)) if rng.random() < 0.3 else rng.choice(pairs)[0]
        _set(pairs, key, rng.choice(NASTY_VALUES))
    return render(pairs)


def s_unicode(rng: Random, c: Corpus) -> Data:
    """Unicode damage inside strings, or a whole line re-encoded or wrapped in stray bytes."""
    line = rng.choice(c.lines)
    if rng.random() < 0.25:
        return rng.choice(LINE_TRANSFORMS)(line)
    for _ in range(rng.randint(1, 3)):
        q = line.find(b'"', rng.randrange(len(line)))
        i = q + 1 if q >= 0 else len(line)
        line = line[:i] + rng.choice(UNICODE_BITS) + line[i:]
    return line


def s_deep(rng: Random, c: Corpus) -> Data:
    """Arrays or objects nested up to 20,000 deep: alone, or in ``properties`` or another field."""
    depth = rng.choice(DEPTHS) if rng.random() < 0.3 else int(2.0 ** rng.uniform(1.0, 14.3))
    opener, closer = rng.choice(NEST)
    closed = depth if rng.random() < 0.8 else rng.randrange(depth + 1)
    core = opener * depth + rng.choice((b"1", b"null", b'"x"', b"")) + closer * closed
    if rng.random() < 0.3:
        return core
    pairs = _doc(rng, c)
    key = rng.choice((b'"properties"', b'"properties"', b'"items"', b'"ts"', b'"x"'))
    _set(pairs, key, b'{"p":' + core + b"}" if key == b'"properties"' else core)
    return render(pairs)


def s_duplicate_keys(rng: Random, c: Corpus) -> Data:
    """A key repeated (1, 2, 10 or 1,000 more times) with its own value or a nasty one."""
    pairs = _doc(rng, c)
    key, value = rng.choice(pairs)
    times = 1 if rng.random() < 0.8 else rng.choice((2, 10, 1000))
    extra = rng.choice(NASTY_VALUES) if rng.random() < 0.5 else value
    at = rng.randrange(len(pairs) + 1)
    pairs[at:at] = [(key, extra)] * times
    return render(pairs)


def s_long_string(rng: Random, c: Corpus) -> Data:
    """A string field 0..1 MiB long, or sized so that the line is 16 KiB -1, +0 or +1."""
    pairs = _doc(rng, c)
    key = rng.choice(pairs)[0] if rng.random() < 0.7 else _key(rng.choice(WIRE_NAMES))
    if rng.random() < 0.3:
        _set(pairs, key, b'""')
        n = MAX_EVENT_BYTES + rng.choice((-1, 0, 1)) - len(render(pairs))
        body = b"x" * max(0, n)
    else:
        n = rng.choice(LENGTHS) if rng.random() < 0.5 else rng.randrange(2000)
        body = rng.choice(STRING_UNITS) * n
    _set(pairs, key, b'"' + body + b'"')
    return render(pairs)


@functools.lru_cache(maxsize=64)
def _object(n: int) -> bytes:
    return render([(b'"k%d"' % i, b"%d" % i) for i in range(n)])


@functools.lru_cache(maxsize=64)
def _items(n: int) -> bytes:
    item = b'{"product_id":"p-1","category":"books","price":1.5,"quantity":2}'
    return b"[" + b",".join([item] * n) + b"]"


def s_bounds(rng: Random, c: Corpus) -> Data:
    """One contract boundary: quantity, price, total, ts, id lengths, 64 properties, 200 items."""
    pairs = _doc(rng, c)
    r = rng.random()
    if r < 0.6:
        key, value = rng.choice(BOUNDS)
    elif r < 0.8:
        key, value = b'"properties"', _object(rng.choice((0, 1, 63, 64, 65, 1000)))
    else:
        key, value = b'"items"', _items(rng.choice((0, 1, 199, 200, 201)))
    _set(pairs, key, value)
    return render(pairs)


def s_blank(rng: Random, c: Corpus) -> Data:
    """Empty or whitespace-only input (also Unicode spaces)."""
    if rng.random() < 0.5:
        return rng.choice(BLANKS)
    return b"".join(rng.choices((b" ", b"\t", b"\r", b"\n"), k=rng.randrange(1, 200)))


def _rand_id(rng: Random) -> bytes:
    n = rng.choice((1, 2, 8, 12, 127, 128, 129)) if rng.random() < 0.2 else rng.randrange(1, 20)
    return orjson.dumps("".join(rng.choices("abcdefghijk-0123456789é😀 ", k=n)))


def _rand_ts(rng: Random) -> bytes:
    ms = rng.randrange(MIN_TS_MS - 10**11, MAX_TS_MS + 10**11)
    if rng.random() < 0.5:
        return b"%d" % ms
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        ms = rng.randrange(MIN_TS_MS, MAX_TS_MS)
    text = format_ts(ms)
    zone = rng.choice(("Z", "+00:00", "-05:30", "+14:00", "", "+0100", "z"))
    return orjson.dumps(text[:-1] + zone)


def _rand_number(rng: Random, lo: float, hi: float) -> bytes:
    v = rng.uniform(lo, hi)
    return b"%d" % int(v) if rng.random() < 0.3 else orjson.dumps(v)


def _rand_scalar(rng: Random) -> bytes:
    return rng.choice((b"1", b'"v"', b"null", b"2.5", b"true", b"[1,2]", b'{"a":{"b":1}}'))


def _rand_properties(rng: Random) -> bytes:
    n = rng.choice((0, 1, 3, 64, 65)) if rng.random() < 0.3 else rng.randrange(6)
    return render([(b'"p%d"' % i, _rand_scalar(rng)) for i in range(n)])


def _rand_items(rng: Random) -> bytes:
    items = [
        render(
            [
                (b'"product_id"', _rand_id(rng)),
                (b'"price"', _rand_number(rng, -1.0, 2e9)),
                (b'"quantity"', _rand_number(rng, -2, 10_002)),
            ][: rng.randint(0, 3)]
        )
        for _ in range(rng.randrange(4))
    ]
    return b"[" + b",".join(items) + b"]"


def _rand_type(rng: Random) -> bytes:
    if rng.random() < 0.9:
        return orjson.dumps(rng.choice(TYPE_NAMES))
    return rng.choice((b'"teleport"', b'""', b'"Page_View"', b'"page_view "'))


#: Plausible (mostly well-typed) random values per field; ids and the rest use their own.
PLAUSIBLE: Final[dict[str, Callable[[Random], bytes]]] = {
    "type": _rand_type,
    "ts": _rand_ts,
    "properties": _rand_properties,
    "items": _rand_items,
    "price": lambda rng: _rand_number(rng, -1.0, 2e9),
    "total": lambda rng: _rand_number(rng, -1.0, 2e9),
    "quantity": lambda rng: _rand_number(rng, -2, 10_002),
    "currency": lambda rng: rng.choice((b'"EUR"', b'"usd"', b'""')),
    "category": lambda rng: rng.choice((b'"books"', b'""', b'"x"')),
}


def s_structured(rng: Random, c: Corpus) -> Data:
    """A random object: required fields usually present, the rest often; values mostly typed."""
    pairs: list[tuple[bytes, bytes]] = []
    for name in WIRE_NAMES:
        if rng.random() < (0.9 if name in ("event_id", "type", "ts") else 0.3):
            make = PLAUSIBLE.get(name, _rand_id)
            value = make(rng) if rng.random() < 0.9 else rng.choice(NASTY_VALUES)
            pairs.append((_key(name), value))
    if rng.random() < 0.2:
        pairs.append((_rand_id(rng), _rand_scalar(rng)))
    rng.shuffle(pairs)
    return render(pairs)


_TEXT_SOURCES: Final[tuple[DecoderStrategy, ...]] = (s_valid, s_unicode, s_type_swap, s_bit_flip)


def s_other_types(rng: Random, c: Corpus) -> Data:
    """Another strategy's input as ``str`` (bad bytes as lone surrogates), bytearray, memoryview."""
    data = rng.choice(_TEXT_SOURCES)(rng, c)
    assert isinstance(data, bytes)
    r = rng.random()
    if r < 0.6:
        return data.decode("utf-8", "surrogateescape")
    return bytearray(data) if r < 0.8 else memoryview(data)


#: ``(name, weight, strategy)`` of decoder inputs.
DECODER_STRATEGIES: Final[tuple[tuple[str, int, DecoderStrategy], ...]] = (
    ("random_bytes", 8, s_random_bytes),
    ("json_noise", 6, s_json_noise),
    ("valid", 3, s_valid),
    ("equivalent", 3, s_equivalent),
    ("bit_flip", 10, s_bit_flip),
    ("byte_edit", 10, s_byte_edit),
    ("splice", 6, s_splice),
    ("truncate", 5, s_truncate),
    ("type_swap", 12, s_type_swap),
    ("unicode", 8, s_unicode),
    ("deep_nesting", 4, s_deep),
    ("duplicate_keys", 5, s_duplicate_keys),
    ("long_string", 4, s_long_string),
    ("bounds", 5, s_bounds),
    ("blank", 2, s_blank),
    ("structured", 12, s_structured),
    ("other_types", 3, s_other_types),
)
#: Strategies whose every input must be accepted.
DECODER_EXPECT: Final = {"valid": "accepted", "equivalent": "accepted"}

pick_decoder = _picker(DECODER_STRATEGIES)


def fuzz_decoder(
    n: int,
    seed: int,
    corpus: Corpus | None = None,
    check: Callable[[Data], str] = check_decoded,
) -> Tally:
    """Run ``n`` inputs through ``check`` (the decoder target by default)."""
    corpus = corpus or build_corpus(seed)
    rng = Random(f"nextbest-fuzz-decoder-{seed}")
    tally = Tally("decoder")
    t0 = time.perf_counter()
    for i in range(n):
        name, make = pick_decoder(rng)
        data = make(rng, corpus)
        try:
            outcome = check(data)
            expected = DECODER_EXPECT.get(name, outcome)
            if outcome != expected:
                raise Violation("valid_rejected", f"{outcome} instead of {expected}", outcome)
        except Exception as exc:
            tally.failed(name, i, exc, describe_data, data)
        else:
            tally.ok(name, outcome)
        if i % 100_000 == 99_999:
            log.info("fuzz: decoder %s inputs, %.0f s", f"{i + 1:,}", time.perf_counter() - t0)
    tally.seconds = time.perf_counter() - t0
    return tally


# ---------------------------------------------------------------------------------------------
# the HTTP target


@dataclass(frozen=True)
class HttpInput:
    """One request: method, request target as sent (ASCII, percent-encoded), headers, body."""

    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


def describe_request(req: HttpInput) -> dict[str, Any]:
    """A request as JSON (the body base64-encoded)."""
    return {
        "method": req.method,
        "target": req.target.decode("ascii", "backslashreplace")[:10_000],
        "target_length": len(req.target),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")[:1000]] for k, v in req.headers],
        "body_base64": _b64(req.body),
    }


@dataclass(frozen=True)
class Route:
    """A route of the API: its path template, methods, path and query parameters."""

    template: str
    methods: frozenset[str]
    params: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    body: bool = False


@dataclass(frozen=True)
class Surface:
    """What the HTTP fuzz aims at: the routes and the ids that have a stored profile."""

    routes: tuple[Route, ...]
    customers: tuple[str, ...]
    visitors: tuple[str, ...]
    corpus: Corpus

    @functools.cached_property
    def profile_routes(self) -> tuple[Route, ...]:
        """``GET .../{customer_id}/profile`` and ``GET .../{anonymous_id}/profile``."""
        ids = (("customer_id",), ("anonymous_id",))
        return tuple(
            r
            for r in self.routes
            if r.template.endswith("/profile") and r.params in ids and "GET" in r.methods
        )


def routes_of(openapi: dict[str, Any], extra: Sequence[str] = ()) -> tuple[Route, ...]:
    """The routes an OpenAPI document lists, plus ``extra`` GET paths (docs, the schema).

    >>> doc = {"paths": {"/v1/x/{id}": {"get": {"parameters": [
    ...     {"name": "id", "in": "path"}, {"name": "as_of", "in": "query"}]}}}}
    >>> r = routes_of(doc)[0]
    >>> r.template, sorted(r.methods), r.params, r.query, r.body
    ('/v1/x/{id}', ['GET'], ('id',), ('as_of',), False)
    """
    routes = []
    for path, ops in openapi.get("paths", {}).items():
        params = [p for op in ops.values() for p in op.get("parameters", [])]
        routes.append(
            Route(
                template=path,
                methods=frozenset(m.upper() for m in ops),
                params=tuple(dict.fromkeys(p["name"] for p in params if p["in"] == "path")),
                query=tuple(dict.fromkeys(p["name"] for p in params if p["in"] == "query")),
                body=any("requestBody" in op for op in ops.values()),
            )
        )
    routes.extend(Route(p, frozenset({"GET", "HEAD"})) for p in extra if p)
    return tuple(routes)


_PARAM_RE: Final = re.compile(r"\{[^}]*\}")


def _fill(template: str, segment: Callable[[], str]) -> str:
    return _PARAM_RE.sub(lambda _: segment(), template)


#: Ids stored by :func:`seed_profiles` besides the simulated ones: every one must be readable.
ODD_IDS: Final = (
    "ü ñ é",
    "with space",
    "100%",
    "{c:1}",
    "a?b#c&d=e",
    "a+b",
    "😀",
    "x" * MAX_ID_LEN,
    "é" * MAX_ID_LEN,
    "-",
    "\t\x01",
)
SPECIAL_SEGMENTS: Final = (
    *("%2F", "..", ".", "%2e%2e", "%00", "%", "%zz", "%C0%AF", "%ED%A0%80", "%EF%BB%BF", "%FF"),
    *("~", "%7Bc%3A1%7D", "*", "%3F", "%23", "%20", "+", "%0A", "%0D%0A", ";", "a%2Fb", "%25"),
    *("nb:%7Bc:1%7D:profile", "%E2%80%AE", "%F4%90%80%80", "%C3", "a;b=c", "%5C", "null"),
)
UNICODE_CHARS: Final = "\x00\x01\x1f\x7f\u00e9\u0301\u200b\u2028\u202e\ufeff\ufffd\uffff😀中١"
AS_OF_SPECIAL: Final = (
    *("", " ", "NaN", "nan", "inf", "-inf", "Infinity", "1e12", "1.7e12", "1767323045000.5"),
    *("0x19B", "1_767_323_045_000", " 1767323045000", "1767323045000 ", "+1767323045000"),
    *("-0", "0", "-1", "946684799999", "946684800000", "4102444799999", "4102444800000"),
    *(
        "9" * 16,
        "9" * 17,
        "-" + "9" * 16,
        "1" * 40,
        "\u0661\u0667\u0666\u0667\u0663\u0662\u0663\u0660\u0664\u0665\u0660\u0660\u0660",
        "\uff11\uff17\uff16\uff17\uff13\uff12\uff13\uff10\uff14\uff15\uff10\uff10\uff10",
    ),
    *("2026-01-02T03:04:05Z", "2026-01-02T03:04:05", "2026-01-02", "2026-01-02T24:00:00Z"),
    *("2026-01-02T23:59:60Z", "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59"),
    *("9999-12-31T23:59:59-23:59", "2026-W01-1T00:00Z", "2026-002T00:00Z", "20260102T030405Z"),
    *("2026-01-02T03:04:05+24:00", "2026-01-02T03:04:05.1234567890123Z", "x" * 41),
    *("2026-01-02T03:04:05\x00Z", "2026-01-02T03:04:05Z" + " " * 30, "2026-01-02t03:04:05z"),
    *("2026-01-02T04:04:05 01:00", "2026-01-02T04:04:05+01:00", "2026-01-02T04:04:05 0100"),
)
ZONES: Final = ("Z", "z", "", "+00:00", "-23:59", "+24:00", "+0100", "+01", "+01:00:00", " 01:00")
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
#: Methods a server passes on (any token): lower-case, WebDAV, made up, long.
ODD_METHODS: Final = ("get", "FOO", "PROPFIND", "M-SEARCH", "X" * 1000)
CONTENT_TYPES: Final = (
    b"application/json",
    b"application/json; charset=utf-16",
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"application/x-ndjson",
    b"",
    b"\xff\xfe",
)
HEADER_VALUES: Final = (
    b"",
    b"*/*",
    b"\xff\xfe\x80",
    b"x" * 65_536,
    b"gzip, deflate, br",
    b"bytes=0-1",
    b"Bearer " + b"A" * 4096,
    b"x \t y",
    b"1; 2; 3",
    b"application/xml",
)
HEADER_NAMES: Final = (
    b"accept",
    b"accept-encoding",
    b"content-type",
    b"cookie",
    b"authorization",
    b"x-forwarded-for",
    b"x-request-id",
    b"if-none-match",
    b"range",
    b"origin",
    b"user-agent",
    b"x-custom",
)


def _rand_text(rng: Random, n: int) -> str:
    return "".join(rng.choices(UNICODE_CHARS + "abcXYZ019-_.~", k=n))


def fuzz_segment(rng: Random, s: Surface) -> str:
    """A path segment (percent-encoded): a stored id, a special one, random bytes or text."""
    r = rng.random()
    if r < 0.15:
        return quote(rng.choice(s.customers + s.visitors), safe="")
    if r < 0.35:
        return rng.choice(SPECIAL_SEGMENTS)
    if r < 0.55:
        return quote(rng.randbytes(rng.randrange(1, 40)), safe="")
    if r < 0.75:
        return quote(_rand_text(rng, rng.randrange(1, 40)), safe="")
    n = rng.choice((0, 1, 127, 128, 129, 1000, 65_536))
    return quote(rng.choice(("x", "é", "😀")) * n, safe="")


def _rfc3339(rng: Random) -> str:
    y, mo, d = rng.randrange(0, 10_001), rng.randrange(0, 14), rng.randrange(0, 33)
    h, mi, sec = rng.randrange(0, 26), rng.randrange(0, 62), rng.randrange(0, 62)
    frac = "." + "7" * rng.randrange(1, 13) if rng.random() < 0.3 else ""
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}{frac}{rng.choice(ZONES)}"


def valid_as_of(rng: Random) -> str:
    """An ``as_of`` the API must accept: RFC 3339 with a zone or epoch ms, 2000..2100."""
    ms = rng.randrange(MIN_TS_MS, MAX_TS_MS)
    r = rng.random()
    if r < 0.3:
        return str(ms)
    if r < 0.6:
        return format_ts(ms)
    return format_ts(ms)[:-1] + rng.choice(("+00:00", "-05:30", "+01:00"))


def fuzz_as_of(rng: Random) -> str:
    """An ``as_of`` value (percent-encoded; ``+`` sometimes raw, as some clients send it)."""
    r = rng.random()
    if r < 0.25:
        value = rng.choice(AS_OF_SPECIAL)
    elif r < 0.4:
        value = rng.choice(("", "-")) + "".join(rng.choices("0123456789", k=rng.randint(1, 40)))
    elif r < 0.6:
        value = _rfc3339(rng)
    elif r < 0.75:
        value = valid_as_of(rng)
    elif r < 0.9:
        value = _rand_text(rng, rng.randrange(0, 50))
    else:
        return quote(rng.randbytes(rng.randrange(0, 50)), safe="")
    return quote(value, safe=rng.choice(("", "+:")))


def fuzz_query(rng: Random, names: Sequence[str]) -> str:
    """A query string: the route's parameters with fuzzed values, repeated, or junk."""
    parts = [f"{n}={fuzz_as_of(rng)}" for n in names if rng.random() < 0.8]
    r = rng.random()
    if r < 0.1:
        parts *= rng.choice((2, 100))
    elif r < 0.2:
        parts += [rng.choice(("as_of", "as_of=", "AS_OF=1", "as_of[]=1", "=", "&&", "%", "a=%zz"))]
    elif r < 0.3:
        parts += [f"p{i}={i}" for i in range(rng.choice((10, 5000)))]
    elif r < 0.4:
        parts += [quote(rng.randbytes(rng.randrange(1, 100)), safe="=&")]
    return "&".join(parts)


def _target(path: str, query: str = "") -> bytes:
    return (path + ("?" + query if query else "")).encode("ascii")


def _stored_id(rng: Random, route: Route, s: Surface) -> str:
    return rng.choice(s.customers if "customer_id" in route.params else s.visitors)


def h_profile_ok(rng: Random, s: Surface) -> HttpInput:
    """A stored id (also odd ones), with or without a valid ``as_of``: must answer 200."""
    route = rng.choice(s.profile_routes)
    path = _fill(route.template, lambda: quote(_stored_id(rng, route, s), safe=""))
    query = "" if rng.random() < 0.3 else "as_of=" + quote(valid_as_of(rng), safe="")
    return HttpInput("GET", _target(path, query))


def h_path_id(rng: Random, s: Surface) -> HttpInput:
    """A route with path parameters, filled with fuzzed segments."""
    route = rng.choice([r for r in s.routes if r.params] or s.routes)
    query = fuzz_query(rng, route.query) if rng.random() < 0.3 else ""
    return HttpInput("GET", _target(_fill(route.template, lambda: fuzz_segment(rng, s)), query))


def h_as_of(rng: Random, s: Surface) -> HttpInput:
    """A profile route (stored id or not) with fuzzed query parameters."""
    route = rng.choice(s.profile_routes or s.routes)
    stored = rng.random() < 0.7
    seg = quote(_stored_id(rng, route, s), safe="") if stored else fuzz_segment(rng, s)
    return HttpInput("GET", _target(_fill(route.template, lambda: seg), fuzz_query(rng, ["as_of"])))


def _random_path(rng: Random, s: Surface) -> str:
    r = rng.random()
    if r < 0.3:
        segs = [fuzz_segment(rng, s) for _ in range(rng.randrange(0, 6))]
        return "/" + "/".join(segs)
    base = _fill(rng.choice(s.routes).template, lambda: fuzz_segment(rng, s))
    if r < 0.5:
        return base + rng.choice(("/", "/x", "//", "/profile", "/..", "%2F"))
    if r < 0.7:
        return rng.choice(("", "/", "//", "/v1", "/V1")) + base
    if r < 0.85:
        return base.upper() if rng.random() < 0.5 else base.replace("/", "//")
    return "/" + "a" * rng.choice((1000, 65_536))


def h_unknown_route(rng: Random, s: Surface) -> HttpInput:
    """A path no route matches (or nearly matches: extra slashes, case, suffixes)."""
    return HttpInput(rng.choice(("GET", "GET", "HEAD", "POST")), _target(_random_path(rng, s)))


def h_method(rng: Random, s: Surface) -> HttpInput:
    """A known route with a random method (standard, lower-case, made up)."""
    route = rng.choice(s.routes)
    method = rng.choice(METHODS) if rng.random() < 0.8 else rng.choice(ODD_METHODS)
    path = _fill(route.template, lambda: quote(_stored_id(rng, route, s), safe=""))
    return HttpInput(method, _target(path))


def _body(rng: Random, s: Surface) -> bytes:
    data = pick_decoder(rng)[1](rng, s.corpus)
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return bytes(data)


def h_body(rng: Random, s: Surface) -> HttpInput:
    """A request body (decoder fuzz inputs, batches of lines) to body routes or any route."""
    bodies = [r for r in s.routes if r.body]
    route = rng.choice(bodies) if bodies and rng.random() < 0.8 else rng.choice(s.routes)
    methods = sorted(route.methods & {"POST", "PUT", "PATCH"}) or ["POST", "PUT", "DELETE"]
    if rng.random() < 0.2:
        body = b"\n".join(_body(rng, s) for _ in range(rng.randrange(2, 20)))
    else:
        body = _body(rng, s)
    path = _fill(route.template, lambda: quote(_stored_id(rng, route, s), safe=""))
    headers = ((b"content-type", rng.choice(CONTENT_TYPES)),)
    return HttpInput(rng.choice(methods), _target(path), headers, body)


def h_headers(rng: Random, s: Surface) -> HttpInput:
    """A valid profile request with odd, long, non-ASCII or many headers."""
    req = h_profile_ok(rng, s)
    n = rng.choice((1, 2, 5, 1000)) if rng.random() < 0.1 else rng.randint(1, 5)
    headers = tuple(
        (rng.choice(HEADER_NAMES), rng.choice(HEADER_VALUES) if rng.random() < 0.8 else b"")
        for _ in range(n)
    )
    return HttpInput(req.method, req.target, headers)


def h_ops(rng: Random, s: Surface) -> HttpInput:
    """A route without path parameters (health, metrics, models, docs) with a random query."""
    route = rng.choice([r for r in s.routes if not r.params] or s.routes)
    query = fuzz_query(rng, ["as_of", "x"]) if rng.random() < 0.5 else ""
    return HttpInput(rng.choice(("GET", "GET", "HEAD")), _target(route.template, query))


HttpStrategy = Callable[[Random, Surface], HttpInput]

#: ``(name, weight, strategy)`` of HTTP requests.
HTTP_STRATEGIES: Final[tuple[tuple[str, int, HttpStrategy], ...]] = (
    ("profile_ok", 10, h_profile_ok),
    ("path_id", 20, h_path_id),
    ("as_of", 20, h_as_of),
    ("unknown_route", 12, h_unknown_route),
    ("method", 10, h_method),
    ("body", 12, h_body),
    ("headers", 8, h_headers),
    ("ops", 4, h_ops),
)
#: Strategies whose every request must get this status.
HTTP_EXPECT: Final = {"profile_ok": "200"}

pick_http = _picker(HTTP_STRATEGIES)


def asgi_scope(req: HttpInput) -> Scope:
    """The ASGI scope uvicorn builds for this request line (path percent-decoded, lossy)."""
    raw_path, _, query = req.target.partition(b"?")
    path = raw_path.decode("ascii")
    if "%" in path:
        path = unquote(path)
    headers = [(b"host", b"127.0.0.1:8000"), *req.headers]
    if req.body:
        headers.append((b"content-length", b"%d" % len(req.body)))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50_000),
        "scheme": "http",
        "method": req.method,
        "root_path": "",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": headers,
        "state": {},
    }


@dataclass
class Exchange:
    """One request and its response, as the ASGI app sent it."""

    req: HttpInput
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _sent: bool = False

    async def receive(self) -> Message:
        """The body once, then (after the response) a disconnect."""
        if not self._sent:
            self._sent = True
            return {"type": "http.request", "body": self.req.body, "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Collect the status and the body."""
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.done.set()


async def call_asgi(app: ASGIApp, req: HttpInput) -> Exchange:
    """Call the app with one request (bounded by :data:`REQUEST_TIMEOUT`)."""
    ex = Exchange(req)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await app(asgi_scope(req), ex.receive, ex.send)
    except TimeoutError as exc:
        raise ServerError(f"no complete answer within {REQUEST_TIMEOUT} s") from exc
    return ex


def _error_shape_ok(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    # {"error", "detail"} (strings); POST /v1/events's 422 all_rejected adds its per-event results
    return (
        isinstance(doc, dict)
        and {"error", "detail"} <= set(doc)
        and (set(doc) == {"error", "detail"} or doc.get("error") == "all_rejected")
        and all(isinstance(doc[k], str) for k in ("error", "detail"))
    )


def check_exchange(ex: Exchange, expected: str | None) -> str:
    """The outcome (the status) of one exchange; raises on 5xx and on broken contracts."""
    outcome = str(ex.status)
    if ex.status >= 500 or not ex.done.is_set():
        state = "complete" if ex.done.is_set() else "incomplete"
        raise ServerError(f"status {ex.status} ({state} answer): {bytes(ex.body[:300])!r}")
    if expected is not None and outcome != expected:
        raise Violation("valid_request_failed", f"{outcome}: {bytes(ex.body[:300])!r}", outcome)
    if 400 <= ex.status < 500 and ex.req.method != "HEAD" and not _error_shape_ok(bytes(ex.body)):
        raise Violation("error_shape", f"{outcome}: {bytes(ex.body[:300])!r}", outcome)
    return outcome


async def _one(app: ASGIApp, name: str, req: HttpInput) -> str:
    return check_exchange(await call_asgi(app, req), HTTP_EXPECT.get(name))


async def fuzz_http(
    app: ASGIApp, surface: Surface, n: int, seed: int, concurrency: int = CONCURRENCY
) -> Tally:
    """Send ``n`` requests to ``app`` (``concurrency`` at a time; run its lifespan around this)."""
    rng = Random(f"nextbest-fuzz-http-{seed}")
    tally = Tally("http")
    t0 = time.perf_counter()
    for start in range(0, n, concurrency):
        batch = [pick_http(rng) for _ in range(min(concurrency, n - start))]
        reqs = [(name, make(rng, surface)) for name, make in batch]
        outs = await asyncio.gather(*(_one(app, nm, r) for nm, r in reqs), return_exceptions=True)
        for i, ((name, req), out) in enumerate(zip(reqs, outs, strict=True)):
            if isinstance(out, str):
                tally.ok(name, out)
            else:
                tally.failed(name, start + i, out, describe_request, req)
        if start // concurrency % 1000 == 999:
            log.info(
                "fuzz: http %s requests, %.0f s", f"{tally.inputs:,}", time.perf_counter() - t0
            )
    tally.seconds = time.perf_counter() - t0
    return tally


# ---------------------------------------------------------------------------------------------
# the HTTP run: Redis, seeded profiles, the app


def _odd_events(cid: str, i: int) -> list[Event]:
    t0 = 1_767_323_045_000
    return [
        Event(event_id=f"odd-{i}-1", type="page_view", ts=t0, customer_id=cid),
        Event(event_id=f"odd-{i}-2", type="purchase", ts=t0 + 60_000, customer_id=cid, total=12.5),
    ]


def _device_events(aid: str, i: int) -> list[Event]:
    return [Event(event_id=f"dev-{i}", type="page_view", ts=1_767_323_045_000, anonymous_id=aid)]


def seed_profiles(redis_url: str, corpus: Corpus, keys: int = 40) -> tuple[list[str], list[str]]:
    """Store the profiles of the first ``keys`` simulated keys, of :data:`ODD_IDS` (customers
    and devices), and links of simulated logins; return the customer and visitor ids stored."""
    import redis

    from features.profile import ProfileState, ingest, new_state
    from features.store import link_key, write_states

    events = [e for e in map(decode_event, corpus.lines) if isinstance(e, Event)]
    for i, odd in enumerate(ODD_IDS):
        events += _odd_events(odd, i) + _device_events(odd, i)
    states: dict[str, ProfileState] = {}
    links: dict[str, str] = {}
    for ev in events:
        if ev.key not in states and (len(states) < keys or ev.event_id.startswith(("odd", "dev"))):
            states[ev.key] = new_state(ev.key)
        if ev.key in states:
            ingest(states[ev.key], ev, LATENESS_MS)
            if ev.type in ("login", "signup") and ev.anonymous_id and ev.customer_id:
                links[ev.anonymous_id] = ev.customer_id
    client = redis.Redis.from_url(redis_url)
    try:
        write_states(client, states.values())
        for aid, cid in links.items():
            client.set(link_key(aid), cid)
    finally:
        client.close()
    customers = [k[2:] for k in states if k.startswith("c:")]
    visitors = [k[2:] for k in states if k.startswith("a:")]
    return customers, visitors + list(links)


@contextmanager
def temporary_redis() -> Iterator[str]:
    """A real redis-server in a temporary directory (stopped and removed afterwards)."""
    from nextbest.runtime import start_redis, stop_redis

    with tempfile.TemporaryDirectory(prefix="nb-fuzz-") as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            yield url
        finally:
            stop_redis(url, proc.pid)
            proc.wait(10)


@contextmanager
def temporary_broker() -> Iterator[str]:
    """A real Kafka-protocol broker (tansu) in a temporary directory, for ``POST /v1/events``."""
    from nextbest.runtime import start_broker, stop_process

    with tempfile.TemporaryDirectory(prefix="nb-fuzz-broker-") as tmp:
        proc, address = start_broker(Path(tmp))
        try:
            yield address
        finally:
            stop_process(proc.pid)
            proc.wait(10)


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        yield


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger (the app logs every 5xx; the tally keeps them instead)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _fuzz_app(app: Any, surface: Surface, n: int, seed: int) -> Tally:
    async with _lifespan(app):
        return await fuzz_http(app, surface, n, seed)


def run_http(
    n: int,
    seed: int,
    redis_url: str,
    corpus: Corpus | None = None,
    kafka_brokers: str | None = None,
) -> Tally:
    """Seed ``redis_url`` with profiles, build the app on it (``POST /v1/events`` writing to
    ``kafka_brokers``), and fuzz it with ``n`` requests. Without a broker the collect route
    answers 503 ``collect_disabled``: give one, or those count as server errors."""
    from nextbest.runtime import ensure_topics
    from nextbest.settings import Settings
    from serving.app import create_app

    corpus = corpus or build_corpus(seed)
    customers, visitors = seed_profiles(redis_url, corpus)
    settings = Settings.from_env({})
    if kafka_brokers is not None:
        ensure_topics(kafka_brokers, [*settings.topics, settings.topic_dead_letter], 1)
    app = create_app(settings, redis_url, kafka_brokers)
    extra = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    routes = routes_of(app.openapi(), [p for p in extra if p])
    surface = Surface(routes, tuple(customers), tuple(visitors), corpus)
    with _quiet("serving"):
        return asyncio.run(_fuzz_app(app, surface, n, seed))


# ---------------------------------------------------------------------------------------------
# command line and report


def save_failures(path: Path, tallies: Sequence[Tally]) -> int:
    """Write the kept failures as JSON lines; how many."""
    rows = [f for t in tallies for f in t.failures]
    with path.open("wb") as fh:
        for f in rows:
            fh.write(orjson.dumps(f.__dict__) + b"\n")
    return len(rows)


def run(decoder: int, http: int, seed: int, failures: Path) -> dict[str, Any]:
    """Both fuzz runs; the JSON report."""
    t0 = time.perf_counter()
    corpus = build_corpus(seed)
    tallies: list[Tally] = []
    if decoder:
        log.info("fuzz: decoder, %s inputs ...", f"{decoder:,}")
        tallies.append(fuzz_decoder(decoder, seed, corpus))
    if http:
        log.info("fuzz: http, %s requests (starting Redis and a broker) ...", f"{http:,}")
        with temporary_redis() as url, temporary_broker() as brokers:
            tallies.append(run_http(http, seed, url, corpus, brokers))
    saved = save_failures(failures, tallies) if any(t.failures for t in tallies) else 0
    return {
        "config": {"seed": seed, "decoder": decoder, "http": http, "cpus": os.cpu_count()},
        "targets": {t.target: t.as_dict() for t in tallies},
        "exceptions": sum(t.exceptions for t in tallies),
        "violations": sum(sum(t.violations.values()) for t in tallies),
        "failures_file": str(failures) if saved else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _counts(counts: dict[str, int], limit: int = 40) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:limit]) or "-"


def render_report(r: dict[str, Any]) -> str:
    """The readable summary."""
    cfg = r["config"]
    lines = [f"nextbest fuzz: seed {cfg['seed']}, {cfg['cpus']} CPUs, {r['seconds']} s in all"]
    for name, t in r["targets"].items():
        lines += [
            f"{name:<8} {t['inputs']:>10,} inputs  {t['seconds']:8.1f} s  "
            f"{t['inputs_per_s']:>9,.0f} inputs/s  exceptions {t['exceptions']:,}  "
            f"violations {sum(t['violations'].values()):,}",
            f"  strategies: {_counts(t['strategies'])}",
            f"  outcomes:   {_counts(t['outcomes'])}",
        ]
        if t["exception_signatures"]:
            lines.append(f"  exceptions: {_counts(t['exception_signatures'])}")
        if t["violations"]:
            lines.append(f"  violations: {_counts(t['violations'])}")
    lines.append(f"exceptions: {r['exceptions']:,} (must be 0)   violations: {r['violations']:,}")
    if r["failures_file"]:
        lines.append(f"first failing inputs: {r['failures_file']}")
    return "\n".join(lines)


def _count(raw: str) -> int:
    v = int(raw)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {raw!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The fuzz command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.fuzz",
        description="Fuzz the event decoder and the HTTP API; count exceptions (must be 0).",
    )
    p.add_argument("--decoder", type=_count, default=DEFAULT_DECODER, help="decoder inputs")
    p.add_argument("--http", type=_count, default=DEFAULT_HTTP, help="HTTP requests")
    p.add_argument("--seed", type=int, default=1, help="seed of every input (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--failures",
        type=Path,
        default=Path("fuzz-failures.jsonl"),
        help="where to write the first failing inputs, if any (default fuzz-failures.jsonl)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.fuzz``; 1 if any exception or violation, else 0."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = run(args.decoder, args.http, args.seed, args.failures)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render_report(result))
    return 1 if result["exceptions"] or result["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

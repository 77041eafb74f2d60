"""CRM exports as ``identify`` events (``nextbest import-traits``): one person per row.

A row has a ``customer_id`` (or, without one, an ``email`` or ``phone`` that resolves it, see
:mod:`features.identifiers`), its traits as the other columns, and optionally ``ts`` (RFC 3339
with a zone, or epoch ms; default: the time of the import) and ``event_id`` (default: derived
from the source and the row's content, so importing the same file twice changes nothing). CSV
(a header row; every value is a string; an empty cell is no value) or JSONL (one object per
line; values keep their JSON types, ``null`` included). Each row becomes one event validated by
the same decoder as every event (:func:`schemas.events.decode_event`); a bad row is a
:class:`~features.catalog.RowError` with its line and the decoder's reason.

>>> from schemas.identifiers import UNSALTED
>>> lines = ["customer_id,email,loyalty_tier,ts", "42,Jane@Example.com,gold,2026-01-02T03:04:05Z",
...          "43,not-an-email,silver,"]
>>> events, errors, rejected = parse_rows(lines, "csv", "crm", 0, UNSALTED)
>>> [(line, e.customer_id, e.traits["loyalty_tier"], e.ts) for line, e in events]
[(2, '42', 'gold', 1767323045000)]
>>> events[0][1].traits["email"] == UNSALTED.email("jane@example.com")
True
>>> [(e.line, e.reason) for e in errors]
[(3, 'bad_value:email')]
>>> b"not-an-email" in rejected[3], b"<redacted>" in rejected[3]
(False, True)
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

import orjson

from features.catalog import RowError
from schemas.events import DecodeError, Event, decode_event
from schemas.identifiers import IdentifierHasher, redact
from schemas.traits import IDENTIFY

#: Columns that are not traits.
RESERVED: Final = ("customer_id", "ts", "event_id")


def _rows(lines: list[str], kind: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    if kind == "csv":
        reader = csv.DictReader(lines)
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                why = "the row's cells do not match the header"
                yield line, RowError(line, "bad_value:traits", why)
                continue
            yield line, {k: v for k, v in row.items() if v != ""}
        return
    for i, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield i, RowError(i, "invalid_json", str(exc)[:200])
            continue
        if not isinstance(doc, dict):
            yield i, RowError(i, "not_an_object", "a row is a JSON object")
            continue
        yield i, doc


def row_event(row: dict[str, Any], source: str, now_ms: int) -> dict[str, Any]:
    """The ``identify`` event of one row (before validation)."""
    traits = {k: v for k, v in row.items() if k not in RESERVED}
    event_id = row.get("event_id")
    if event_id is None:
        content = orjson.dumps([source, row], option=orjson.OPT_SORT_KEYS)
        event_id = f"import:{source}:{hashlib.sha256(content).hexdigest()[:24]}"
    ev: dict[str, Any] = {
        "event_id": event_id,
        "type": IDENTIFY,
        "ts": row.get("ts", now_ms),
        "source": source,
        "traits": traits,
    }
    if "customer_id" in row:
        ev["customer_id"] = row["customer_id"]
    return ev


class Rows(NamedTuple):
    """The good rows as events (with their line), the bad rows, and each bad row's event as
    JSON with its identifiers redacted (by line: what its dead letter holds)."""

    events: list[tuple[int, Event]]
    errors: list[RowError]
    rejected: dict[int, bytes]


def parse_rows(
    lines: list[str], kind: str, source: str, now_ms: int, ids: IdentifierHasher
) -> Rows:
    """Every row as a validated ``identify`` event (with its line), and the bad rows."""
    events: list[tuple[int, Event]] = []
    errors: list[RowError] = []
    rejected: dict[int, bytes] = {}
    for line, row in _rows(lines, kind):
        if isinstance(row, RowError):
            errors.append(row)
            rejected[line] = redact(lines[line - 1].encode()) if kind == "jsonl" else b""
            continue
        ts = row.get("ts")
        if kind == "csv" and isinstance(ts, str) and ts.lstrip("-").isdigit():
            row["ts"] = int(ts)  # (epoch ms in a CSV cell)
        raw = orjson.dumps(row_event(row, source, now_ms))
        out = decode_event(raw, ids)
        if isinstance(out, DecodeError):
            errors.append(RowError(line, out.reason, out.detail[:200]))
            rejected[line] = redact(raw)
        else:
            events.append((line, out))
    return Rows(events, errors, rejected)

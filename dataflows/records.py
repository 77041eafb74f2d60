"""What flows between the steps: raw records with their source position, and dead letters."""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec
import orjson

from schemas.events import DecodeError, Event, decode_event


class RawRecord(msgspec.Struct, frozen=True, array_like=True):
    """Bytes as read, and where from.

    ``position`` is ``file:<path>:<line>``, ``kafka:<topic>:<partition>:<offset>`` or ``sim:<n>``.
    """

    data: bytes
    position: str


class Rejected(msgspec.Struct, frozen=True, array_like=True):
    """A record that did not become an event, and why."""

    record: RawRecord
    error: DecodeError


def decode_record(rec: RawRecord) -> Event | Rejected:
    """Decode a raw record; failures become :class:`Rejected` (never raises).

    >>> decode_record(RawRecord(b"{", "file:x.jsonl:1")).error.reason
    'invalid_json'
    """
    out = decode_event(rec.data)
    if isinstance(out, DecodeError):
        return Rejected(rec, out)
    return out


def dead_letter_document(rej: Rejected, now_ms: int | None = None) -> dict[str, Any]:
    """The dead-letter record: original bytes (as text, or base64 if not UTF-8), reason, position.

    >>> rej = Rejected(RawRecord(b"{", "file:x:1"), DecodeError("invalid_json"))
    >>> d = dead_letter_document(rej, 0)
    >>> d["reason"], d["data"], d["position"]
    ('invalid_json', '{', 'file:x:1')
    """
    doc: dict[str, Any] = {
        "reason": rej.error.reason,
        "detail": rej.error.detail,
        "position": rej.record.position,
        "rejected_at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
    }
    try:
        doc["data"] = rej.record.data.decode("utf-8")
    except UnicodeDecodeError:
        doc["data_base64"] = base64.b64encode(rej.record.data).decode("ascii")
    return doc


def encode_dead_letter(rej: Rejected) -> bytes:
    """One dead-letter record as a JSON line (without the newline)."""
    return orjson.dumps(dead_letter_document(rej))

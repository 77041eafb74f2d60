"""What flows between the steps: records, routed events, ticks, sink operations, dead letters."""

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
    """A record that did not become (or could not be applied as) an event, and why."""

    record: RawRecord
    error: DecodeError


class In(msgspec.Struct, frozen=True, array_like=True):
    """A decoded event with its source record (kept so a late event can be dead-lettered whole)."""

    event: Event
    record: RawRecord


class Tick(msgspec.Struct, frozen=True, array_like=True):
    """The event-time clock passed a timer of this key: the watermark is now ``watermark``."""

    watermark: int


class Handover(msgspec.Struct, frozen=True, array_like=True):
    """An anonymous device's history, handed to the customer it was first linked to."""

    state: Any


# Sink operations (the Redis writer applies the last one per Redis key of each batch).
class WriteProfile(msgspec.Struct, frozen=True, array_like=True):
    """Replace the profile hash of ``key`` with the projection of ``state``."""

    key: str
    state: Any


class DropProfile(msgspec.Struct, frozen=True, array_like=True):
    """Delete everything of ``key`` (retention)."""

    key: str


class WriteLink(msgspec.Struct, frozen=True, array_like=True):
    """Device ``anonymous_id`` now belongs to ``customer_id``: its anonymous profile goes."""

    anonymous_id: str
    customer_id: str


class WriteBoundaries(msgspec.Struct, frozen=True, array_like=True):
    """Publish the RFM population boundaries."""

    data: bytes


class WriteCheckpoint(msgspec.Struct, frozen=True, array_like=True):
    """Publish a model checkpoint (the previous one is kept as the fallback)."""

    target: str
    version: int
    data: bytes


SinkOp = WriteProfile | DropProfile | WriteLink | WriteBoundaries | WriteCheckpoint


def decode_record(rec: RawRecord) -> In | Rejected:
    """Decode a raw record; failures become :class:`Rejected` (never raises).

    >>> decode_record(RawRecord(b"{", "file:x.jsonl:1")).error.reason
    'invalid_json'
    """
    out = decode_event(rec.data)
    if isinstance(out, DecodeError):
        return Rejected(rec, out)
    return In(out, rec)


def late(item: In) -> Rejected:
    """A late event as a dead letter (reason ``late``)."""
    detail = "older than the allowed lateness behind the newest event of its profile"
    return Rejected(item.record, DecodeError("late", detail))


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

"""What flows between the steps: records, routed events, ticks, sink operations, dead letters."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from dataflows.erasure import EraseIn, WriteStatus
from schemas import deadletters
from schemas.decisions import DecisionDecodeError, DecisionRecord, decode_decision
from schemas.erasure import MARKER as ERASURE_MARKER
from schemas.erasure import ErasureDecodeError, decode_request
from schemas.events import DecodeError, Event, decode_event, encode_event, format_ts
from schemas.identifiers import UNSALTED, IdentifierHasher, redact


class RawRecord(msgspec.Struct, frozen=True, array_like=True):
    """Bytes as read, and where from.

    ``position`` is ``file:<path>:<line>``, ``kafka:<topic>:<partition>:<offset>`` or ``sim:<n>``;
    ``timestamp`` the source's own time of the record in epoch ms (a Kafka message's timestamp),
    when it has one.
    """

    data: bytes
    position: str
    timestamp: int | None = None


class Rejected(msgspec.Struct, frozen=True, array_like=True):
    """A record that did not become (or could not be applied as) an event, and why."""

    record: RawRecord
    error: DecodeError


#: ``In.stream_wm`` before the stream time of its source partition is known.
NO_STREAM_TIME: int = -(2**62)


class In(msgspec.Struct, frozen=True, array_like=True):
    """A decoded event with its source record (kept so a late event can be dead-lettered whole)
    and the event-time watermark of its source partition when it arrived: the newest event time
    of the partition's earlier records minus the allowed lateness (see
    :mod:`dataflows.steps.stream_time`)."""

    event: Event
    record: RawRecord
    stream_wm: int = NO_STREAM_TIME


class DecisionIn(msgspec.Struct, frozen=True, array_like=True):
    """A decision record (the decision log, :mod:`schemas.decisions`) read from the input."""

    decision: DecisionRecord
    record: RawRecord


class Tick(msgspec.Struct, frozen=True, array_like=True):
    """The event-time clock passed a timer of this key: the watermark is now ``watermark``."""

    watermark: int


class ClockTime(msgspec.Struct, frozen=True, array_like=True):
    """How far one clock shard has come: every tick at or below ``watermark`` was sent."""

    shard: int
    watermark: int


class Reproject(msgspec.Struct, frozen=True, array_like=True):
    """Redis lost its data: write this key's whole state again (see :mod:`dataflows.reproject`)."""


class Handover(msgspec.Struct, frozen=True, array_like=True):
    """An anonymous device's history, handed to the customer it was first linked to, at the
    source ``position`` of the linking event (it applies just before that event)."""

    state: Any
    position: str = ""
    #: the linking event's time and its partition's watermark (see :class:`In`)
    ts: int = NO_STREAM_TIME
    stream_wm: int = NO_STREAM_TIME


class IdentifierNote(msgspec.Struct, frozen=True, array_like=True):
    """Identifier ``token`` is contested: ``owner`` keeps it, ``claimants`` all claimed it
    (see :mod:`features.identifiers`); sent to every claimant's profile, at the source
    ``position`` of the claim that changed it."""

    token: str
    owner: str
    claimants: tuple[str, ...]
    position: str = ""


def position_key(position: str) -> tuple[str, int]:
    """Order of source positions: the source and partition, then the line or offset.

    The arrival order of one source partition (a file's lines, a Kafka partition's offsets) is
    the order of these keys, whatever path a record took through the flow.

    >>> position_key("file:/d/h.jsonl:12") < position_key("file:/d/h.jsonl:100")
    True
    >>> position_key("kafka:clickstream:3:70"), position_key("odd")
    (('kafka:clickstream:3', 70), ('odd', -1))
    """
    head, _, tail = position.rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (position, -1)


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


class LinkDevice(msgspec.Struct, frozen=True, array_like=True):
    """Device (or identifier) ``anonymous_id`` was linked to ``customer_id``: the customer's set
    of every device ever linked (what an erasure reaches) gets it."""

    customer_id: str
    anonymous_id: str


class WriteBoundaries(msgspec.Struct, frozen=True, array_like=True):
    """Publish the RFM population boundaries."""

    data: bytes


class WriteCheckpoint(msgspec.Struct, frozen=True, array_like=True):
    """Publish a model checkpoint (the previous one is kept as the fallback)."""

    target: str
    version: int
    data: bytes


class WriteSegments(msgspec.Struct, frozen=True, array_like=True):
    """Replace customer ``key``'s memberships: segment -> since (epoch ms)."""

    key: str
    members: dict[str, int]


class IndexSegment(msgspec.Struct, frozen=True, array_like=True):
    """Customer ``customer_id`` is in ``segment`` since ``since`` (``None``: not any more)."""

    segment: str
    customer_id: str
    since: int | None


class ExitSegment(msgspec.Struct, frozen=True, array_like=True):
    """Customer ``customer_id`` last left ``segment`` at ``at`` (``None``: forget it, the
    profile was dropped): the segment's exits index."""

    segment: str
    customer_id: str
    at: int | None


class WriteConversion(msgspec.Struct, frozen=True, array_like=True):
    """A conversion on ``action`` at ``ts`` was attributed to a decision for ``key``: the
    contact counters' last conversion moves forward to it (never back), kept ``ttl_ms``."""

    key: str
    action: str
    ts: int
    ttl_ms: int


class WriteProduct(msgspec.Struct, frozen=True, array_like=True):
    """Replace product ``product_id``'s projection (a JSON document, :mod:`features.products`)."""

    product_id: str
    data: bytes


class WritePopular(msgspec.Struct, frozen=True, array_like=True):
    """Replace the popularity board's top lists: list name -> encoded list."""

    lists: dict[str, bytes]


SinkOp = (
    WriteProfile
    | DropProfile
    | WriteLink
    | LinkDevice
    | WriteBoundaries
    | WriteCheckpoint
    | WriteSegments
    | IndexSegment
    | ExitSegment
    | WriteConversion
    | WriteProduct
    | WritePopular
    | WriteStatus
)


class SegmentEvent(msgspec.Struct, frozen=True):
    """One segment transition of a customer (the ``segment-events`` record, see
    :func:`encode_segment_event`)."""

    customer_id: str
    segment: str
    direction: str
    at: int
    reason: dict[str, Any]
    backfill: bool = False

    @property
    def transition_id(self) -> str:
        """Deterministic: the same across replays and resumes."""
        from features.segments import transition_id

        return transition_id("c:" + self.customer_id, self.segment, self.direction, self.at)


def segment_event_document(e: SegmentEvent, now_ms: int) -> dict[str, Any]:
    """The record as published (``emitted_at`` is the only wall-clock field)."""
    return {
        "transition_id": e.transition_id,
        "customer_id": e.customer_id,
        "segment": e.segment,
        "direction": e.direction,
        "at": format_ts(e.at),
        "at_ms": e.at,
        "emitted_at": format_ts(now_ms),
        "reason": {k: v for k, v in e.reason.items() if k != "values"},
        "values": e.reason.get("values", {}),
        "backfill": e.backfill,
    }


def encode_segment_event(e: SegmentEvent, now_ms: int | None = None) -> bytes:
    """One ``segment-events`` record as JSON (without the newline).

    >>> ev = SegmentEvent("42", "lapsed_30d", "entered", 1_767_225_600_000,
    ...                   {"rule": "entry", "values": {"days_since_last_seen": 30.0}})
    >>> doc = orjson.loads(encode_segment_event(ev, now_ms=0))
    >>> doc["at"], doc["values"], len(doc["transition_id"])
    ('2026-01-01T00:00:00Z', {'days_since_last_seen': 30.0}, 32)
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return orjson.dumps(segment_event_document(e, now_ms), default=str)


def decode_record(
    rec: RawRecord, max_future_ms: int = 0, ids: IdentifierHasher = UNSALTED
) -> In | DecisionIn | EraseIn | Rejected:
    """Decode a raw record; failures become :class:`Rejected` (never raises).

    With ``max_future_ms``, an event whose ``ts`` is more than that ahead of the record's own
    timestamp (when it was produced) is rejected as ``future_timestamp``: one such event would
    carry the event-time watermark years ahead and expire every profile.

    >>> decode_record(RawRecord(b"{", "file:x.jsonl:1")).error.reason
    'invalid_json'
    >>> ev = b'{"event_id":"e","type":"page_view","ts":"2066-01-01T00:00:00Z","customer_id":"c"}'
    >>> decode_record(RawRecord(ev, "kafka:t:0:1", 1_767_225_600_000), 86_400_000).error.reason
    'future_timestamp'
    >>> type(decode_record(RawRecord(ev, "file:x:1"), 86_400_000)).__name__  # no record time
    'In'

    Identifiers are hashed with ``ids`` (:mod:`schemas.identifiers`); the record of an event
    that carried any keeps the event's canonical bytes (with the tokens) instead of the bytes
    read, and a rejected record's identifiers are redacted: no raw identifier goes further.
    """
    out = decode_event(rec.data, ids)
    if isinstance(out, DecodeError):
        if out.reason in _NOT_AN_EVENT and _DECISION in rec.data:
            return _decision(rec)
        if out.reason in _NOT_AN_EVENT and ERASURE_MARKER in rec.data:
            return _erasure(rec)
        return Rejected(RawRecord(redact(rec.data), rec.position, rec.timestamp), out)
    if out.email is not None or out.phone is not None or (out.traits and _IDS & out.traits.keys()):
        rec = RawRecord(encode_event(out), rec.position, rec.timestamp)
    if max_future_ms and rec.timestamp is not None and out.ts > rec.timestamp + max_future_ms:
        ahead = (out.ts - rec.timestamp) / 3_600_000
        detail = f"ts is {ahead:.1f} h after the record was produced"
        return Rejected(rec, DecodeError("future_timestamp", detail))
    return In(out, rec)


_IDS = frozenset({"email", "phone"})
#: What a decision record looks like to the event decoder, and what marks one.
_NOT_AN_EVENT = frozenset({"missing_field:event_id", "unknown_type"})
_DECISION = b'"type":"decision"'


def _erasure(rec: RawRecord) -> EraseIn | Rejected:
    """An erasure request of the input (see :mod:`schemas.erasure`), or ``bad_erasure``.

    >>> _erasure(RawRecord(b'{"type":"erasure"}', "file:d:1")).error.reason
    'bad_erasure'
    """
    try:
        return EraseIn(decode_request(rec.data), rec.position)
    except ErasureDecodeError as exc:
        return Rejected(rec, DecodeError("bad_erasure", str(exc)[:200]))


def _decision(rec: RawRecord) -> DecisionIn | Rejected:
    """A decision record of the input (see :mod:`schemas.decisions`), or ``bad_decision``.

    >>> _decision(RawRecord(b'{"type":"decision"}', "file:d:1")).error.reason
    'bad_decision'
    """
    try:
        return DecisionIn(decode_decision(rec.data), rec)
    except DecisionDecodeError as exc:
        return Rejected(rec, DecodeError("bad_decision", str(exc)[:200]))


def late(item: In) -> Rejected:
    """A late event as a dead letter (reason ``late``)."""
    detail = "older than the allowed lateness behind the newest event of its profile"
    return Rejected(item.record, DecodeError("late", detail))


#: Default bound of one dead-letter record (``NEXTBEST_DEAD_LETTER_MAX_BYTES``).
DEAD_LETTER_MAX_BYTES = deadletters.MAX_BYTES


def dead_letter_document(
    rej: Rejected, now_ms: int | None = None, data: bytes | None = None
) -> dict[str, Any]:
    """The dead-letter record (:mod:`schemas.deadletters`) of a rejected record; ``data``
    replaces the record's bytes.

    >>> rej = Rejected(RawRecord(b"{", "file:x:1"), DecodeError("invalid_json"))
    >>> d = dead_letter_document(rej, 0)
    >>> d["reason"], d["data"], d["position"]
    ('invalid_json', '{', 'file:x:1')
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    raw = rej.record.data if data is None else data
    return deadletters.document(raw, rej.error, rej.record.position, now)


def encode_dead_letter(
    rej: Rejected, max_bytes: int = DEAD_LETTER_MAX_BYTES, now_ms: int | None = None
) -> bytes:
    """One dead-letter record as a JSON line (without the newline), at most ``max_bytes``
    (:func:`schemas.deadletters.encode`: a longer one keeps a prefix of the bytes, with
    ``truncated``, ``original_size`` and ``sha256``).

    >>> big = Rejected(RawRecord(b"\x01" * 200_000, "kafka:t:0:7"), DecodeError("too_large"))
    >>> out = encode_dead_letter(big, max_bytes=4096, now_ms=0)
    >>> len(out) <= 4096, orjson.loads(out)["truncated"], orjson.loads(out)["original_size"]
    (True, True, 200000)
    >>> len(encode_dead_letter(Rejected(RawRecord(b"{", "f:1"), DecodeError("x")), 4096, 0))
    73
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return deadletters.encode(rej.record.data, rej.error, rej.record.position, max_bytes, now)

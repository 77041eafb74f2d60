"""The collect endpoint ``POST /v1/events``: events from websites, apps and source systems
are validated like the dataflow validates them and written to the topics ``nextbest run`` reads.

The format, limits, status codes and embedded-mode behaviour are in the README, "Collecting
events: POST /v1/events".
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast

import msgspec
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas import deadletters
from schemas.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_PROPERTIES_DEPTH,
    REASONS,
    TRANSACTION_TYPES,
    DecodeError,
    Event,
    decode_event,
    encode_event,
)
from schemas.identifiers import UNSALTED, IdentifierHasher, redact
from schemas.jsonschema import event_body
from serving.errors import ApiError, error_responses
from serving.metrics import HttpMetrics
from serving.producer import ACK_TIMEOUT, BrokerUnavailable, EventProducer, OutRecord

log = logging.getLogger(__name__)

#: Most events in one batch.
MAX_BATCH_EVENTS: Final = 500
#: Largest request body (bytes).
MAX_BODY_BYTES: Final = 1024 * 1024
#: The route (also the prefix of dead-letter positions).
ROUTE: Final = "/v1/events"


class CollectSettings(Protocol):
    """What the collect endpoint needs of the settings (:class:`nextbest.settings.Settings`)."""

    @property
    def topic_clickstream(self) -> str: ...
    @property
    def topic_transactions(self) -> str: ...
    @property
    def topic_dead_letter(self) -> str: ...
    @property
    def dead_letter_max_bytes(self) -> int: ...
    @property
    def max_future_ms(self) -> int: ...
    def identity_hasher(self) -> IdentifierHasher: ...


@dataclass
class Collector:
    """The producer and the topics of one app (``app.state.collect``)."""

    producer: EventProducer
    clickstream: str
    transactions: str
    dead_letter: str
    dead_letter_max_bytes: int
    max_future_ms: int
    #: hashes identifiers before anything is written (``NEXTBEST_IDENTITY_SALT``)
    ids: IdentifierHasher = UNSALTED


def start_collect(
    app: FastAPI,
    settings: CollectSettings,
    kafka_brokers: str | None,
    ack_timeout: float | None = None,
    disabled_reason: str | None = None,
) -> None:
    """Open the producer (in the app's lifespan); no brokers: the endpoint answers 503
    ``collect_disabled`` with ``disabled_reason`` (or a default one)."""
    app.state.collect = None
    app.state.collect_disabled = disabled_reason or (
        "this server has no Kafka broker to write events to: start `nextbest serve` with "
        "NEXTBEST_KAFKA_BROKERS set, or unset for the embedded broker"
    )
    if not kafka_brokers:
        return
    timeout = ACK_TIMEOUT if ack_timeout is None else ack_timeout
    app.state.collect = Collector(
        producer=EventProducer(kafka_brokers, ack_timeout=timeout),
        clickstream=settings.topic_clickstream,
        transactions=settings.topic_transactions,
        dead_letter=settings.topic_dead_letter,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
        max_future_ms=settings.max_future_ms,
        ids=settings.identity_hasher(),
    )
    log.info("serving: POST %s writes to %s", ROUTE, kafka_brokers)


async def stop_collect(app: FastAPI) -> None:
    """Close the producer (waiting a moment for records still queued)."""
    collector = getattr(app.state, "collect", None)
    app.state.collect = None
    if collector is not None:
        await collector.producer.close()


# --------------------------------------------------------------------------------------------
# documentation models (the answers are built as plain dicts)


class EventResult(BaseModel):
    """What became of one event of the request."""

    index: int = Field(description="Position of the event in the request (0 for a single one).")
    event_id: str | None = Field(description="The event's `event_id` when it is a string.")
    status: Literal["accepted", "rejected"]
    reason: str | None = Field(
        description="Why it was rejected (a dead-letter reason); null when accepted.",
        examples=["missing_field:ts"],
    )
    detail: str | None = Field(None, description="Human-readable detail (rejected only).")


class CollectBody(BaseModel):
    """The per-event answer of ``POST /v1/events``."""

    accepted: int
    rejected: int
    results: list[EventResult]


class RejectedBody(BaseModel):
    """A 422: ``empty_batch`` (an empty array), or ``all_rejected`` (every event was rejected),
    which also carries the per-event answer."""

    error: str = Field(examples=["all_rejected"])
    detail: str
    accepted: int | None = Field(None, description="0 (`all_rejected` only).")
    rejected: int | None = Field(None, description="Events rejected (`all_rejected` only).")
    results: list[EventResult] | None = Field(None, description="`all_rejected` only.")


def request_body_schema() -> dict[str, Any]:
    """The body's JSON Schema: exactly what the route accepts (answers 2xx). One event (the
    event contract, :func:`schemas.jsonschema.event_body`), or a batch of 1 to
    :data:`MAX_BATCH_EVENTS` JSON values of which at least one is a valid event: each element
    that is not is rejected in the per-event results of a 200, and a batch with no valid event
    is refused (422 ``all_rejected``), as is a single invalid event.

    >>> s = request_body_schema()
    >>> [b.get("type") for b in s["oneOf"]], s["oneOf"][1]["maxItems"]
    (['object', 'array'], 500)
    """
    event = event_body()
    batch = {
        "type": "array",
        "description": "A batch: at least one element must be a valid event; the others are "
        "rejected one by one in the answer's results.",
        "minItems": 1,
        "maxItems": MAX_BATCH_EVENTS,
        "contains": event,
    }
    return {"oneOf": [event, batch]}


_REQUEST_BODY: Final[dict[str, Any]] = {
    "required": True,
    "description": f"One event (an object) or a batch (an array of at most {MAX_BATCH_EVENTS} "
    f"elements, at least one of them a valid event); at most {MAX_BODY_BYTES} bytes (else 413), "
    f"each event at most {MAX_EVENT_BYTES} bytes of JSON with `properties` nested at most "
    f"{MAX_PROPERTIES_DEPTH} levels (else that event is rejected), and `ts` at most "
    "NEXTBEST_MAX_FUTURE ahead of the time of receipt (else `future_timestamp`): JSON Schema "
    "cannot state these.",
    "content": {
        "application/json": {
            "schema": request_body_schema(),
            "example": {
                "event_id": "e-1",
                "type": "page_view",
                "ts": "2026-03-01T10:00:00Z",
                "anonymous_id": "d-1",
            },
        }
    },
}

# --------------------------------------------------------------------------------------------
# request handling


class _Peek(msgspec.Struct):
    """The two fields a rejected event is reported by (whatever else it holds)."""

    event_id: Any = None
    type: Any = None


_peek_decoder: Final = msgspec.json.Decoder(_Peek)
_batch_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])


def _peek(raw: bytes) -> tuple[str | None, str]:
    """A rejected event's ``event_id`` (when a short string) and type label (or ``unknown``)."""
    try:
        p = _peek_decoder.decode(raw)
    except Exception:  # not an object, not JSON: nothing to report
        return None, "unknown"
    event_id = p.event_id if isinstance(p.event_id, str) and len(p.event_id) <= MAX_ID_LEN else None
    known = isinstance(p.type, str) and p.type in EVENT_TYPES  # (any JSON value: a list too)
    return event_id, p.type if known else "unknown"


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body of {declared} bytes > {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def split_body(body: bytes) -> list[bytes]:
    """The events of a body as their original bytes: the elements of an array, else the body.

    Raises :class:`ApiError` 400 ``invalid_json``, 413 ``too_large`` (too many events) or 422
    ``empty_batch``.

    >>> split_body(b' [{"a": 1}, 2 ] ')
    [b'{"a": 1}', b'2']
    >>> split_body(b'{"a": 1}\\n')
    [b'{"a": 1}']
    """
    text = body.strip()
    if not text.startswith(b"["):
        if isinstance(out := decode_event(text), DecodeError) and out.reason == "invalid_json":
            raise ApiError(400, "invalid_json", f"the body is not JSON: {out.detail}")
        return [text]
    try:
        raws = _batch_decoder.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    except msgspec.ValidationError as exc:  # pragma: no cover - any JSON array decodes
        raise ApiError(400, "invalid_json", str(exc)) from None
    if len(raws) > MAX_BATCH_EVENTS:
        raise ApiError(413, "too_large", f"{len(raws)} events > {MAX_BATCH_EVENTS} per batch")
    if not raws:
        raise ApiError(422, "empty_batch", "the batch holds no event")
    return [bytes(r) for r in raws]


def check(
    raw: bytes, now_ms: int, max_future_ms: int, ids: IdentifierHasher = UNSALTED
) -> Event | DecodeError:
    """Decode one event as the dataflow does, and apply its ``future_timestamp`` rule against
    the time of receipt.

    >>> check(b'{"event_id":"e","type":"page_view","ts":"2066-01-01T00:00:00Z","customer_id":"c"}',
    ...       1_767_225_600_000, 86_400_000).reason
    'future_timestamp'
    """
    out = decode_event(raw, ids)
    if isinstance(out, Event) and max_future_ms and out.ts > now_ms + max_future_ms:
        ahead = (out.ts - now_ms) / 3_600_000
        return DecodeError("future_timestamp", f"ts is {ahead:.1f} h after it was received")
    return out


def carries_identifiers(event: Event) -> bool:
    """Whether an event carries an email or phone (as tokens, once decoded)."""
    t = event.traits
    return (
        event.email is not None
        or event.phone is not None
        or (t is not None and ("email" in t or "phone" in t))
    )


def dead_letter_record(
    data: bytes, error: DecodeError, position: str, max_bytes: int, now_ms: int
) -> bytes:
    """A dead-letter record in the dataflow's format, at most ``max_bytes``: one encoder for
    both, :func:`schemas.deadletters.encode` (a test keeps the two equal).

    >>> dead_letter_record(b"{", DecodeError("invalid_json"), "http:x:0", 4096, 0)
    b'{"reason":"invalid_json","detail":"","position":"http:x:0","rejected_at_ms":0,"data":"{"}'
    """
    return deadletters.encode(data, error, position, max_bytes, now_ms)


def _record_metrics(metrics: HttpMetrics, results: list[dict[str, Any]], types: list[str]) -> None:
    for res, typ in zip(results, types, strict=True):
        metrics.collect_events.labels(res["status"], typ).inc()
        if res["status"] == "rejected":
            reason = res["reason"] if res["reason"] in REASONS else "other"
            metrics.collect_rejected.labels(reason).inc()


router = APIRouter()


@router.post(
    ROUTE,
    response_model=CollectBody,
    responses={
        **error_responses(400, 413, 503),
        422: {"model": RejectedBody, "description": "Every event was rejected, or no event"},
    },
    openapi_extra={"requestBody": _REQUEST_BODY},
    tags=["events"],
    summary="Send events: one, or a batch of up to 500",
)
async def post_events(request: Request) -> JSONResponse:
    """Validate each event as the dataflow does; write the accepted ones to the input topics
    (transactions or clickstream, keyed by customer or device) and the rejected ones to the
    dead-letter topic; answer per event once the broker acknowledged every write."""
    metrics = cast(HttpMetrics, request.app.state.metrics)
    collector = cast(Collector | None, request.app.state.collect)
    if collector is None:
        metrics.collect_requests.labels("collect_disabled").inc()
        raise ApiError(503, "collect_disabled", str(request.app.state.collect_disabled))
    try:
        raws = split_body(await _read_body(request))
    except ApiError as exc:
        metrics.collect_requests.labels(exc.error).inc()
        raise
    request_id = uuid.uuid4().hex
    now_ms = time.time_ns() // 1_000_000
    results: list[dict[str, Any]] = []
    types: list[str] = []
    records: list[OutRecord] = []
    for i, raw in enumerate(raws):
        out = check(raw, now_ms, collector.max_future_ms, collector.ids)
        if isinstance(out, Event):
            topic = (
                collector.transactions if out.type in TRANSACTION_TYPES else collector.clickstream
            )
            # (identifiers leave as tokens: the topic never holds a raw email or phone)
            value = encode_event(out) if carries_identifiers(out) else raw
            records.append(OutRecord(topic, out.key.encode(), value))
            results.append(
                {"index": i, "event_id": out.event_id, "status": "accepted", "reason": None}
            )
            types.append(out.type)
            continue
        event_id, typ = _peek(raw)
        position = f"http:{ROUTE}:{request_id}:{i}"
        value = dead_letter_record(
            redact(raw), out, position, collector.dead_letter_max_bytes, now_ms
        )
        records.append(OutRecord(collector.dead_letter, None, value))
        results.append({"index": i, "event_id": event_id, "status": "rejected",
                        "reason": out.reason, "detail": out.detail[:200]})  # fmt: skip
        types.append(typ)
    t0 = time.perf_counter()
    try:
        await collector.producer.send(records)
    except BrokerUnavailable as exc:
        metrics.collect_requests.labels("broker_unavailable").inc()
        log.warning("POST %s: broker unavailable (%s): %s", ROUTE, exc.kind, exc.detail)
        raise ApiError(
            503,
            "broker_unavailable",
            f"{exc.detail}; nothing of this request is accepted: send it again",
        ) from None
    metrics.collect_ack.observe(time.perf_counter() - t0)
    _record_metrics(metrics, results, types)
    accepted = sum(1 for r in results if r["status"] == "accepted")
    body: dict[str, Any] = {
        "accepted": accepted,
        "rejected": len(results) - accepted,
        "results": results,
    }
    headers = {"X-Request-Id": request_id}
    if accepted == 0:
        metrics.collect_requests.labels("all_rejected").inc()
        detail = f"every event was rejected ({len(results)}); see results"
        return JSONResponse(
            {"error": "all_rejected", "detail": detail, **body}, 422, headers=headers
        )
    metrics.collect_requests.labels("partial" if body["rejected"] else "accepted").inc()
    return JSONResponse(body, 200, headers=headers)

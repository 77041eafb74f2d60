"""Erasure requests: forget a person everywhere the engine keeps data (README, "Privacy").

An erasure travels through the stream like the events it erases, so every step applies it in
order: ``DELETE /v1/customers/{id}`` (or ``nextbest erase ID``) writes one record to the
transactions topic, keyed by the customer, and a ``pending`` status to Redis::

    {"type": "erasure", "request_id": "<32 hex>", "customer_id": "42",
     "anonymous_ids": ["d-1"], "identifiers": ["em:<32 hex>"], "ts": 1767323045000}

``anonymous_ids`` and ``identifiers`` are what the requester found linked to the customer (its
stored profile); the dataflow adds what its own state knows. When every step has applied it,
the status becomes ``done``. The status never names the person: only the request id, the
times and the number of steps.

Examples
--------
>>> r = ErasureRequest("0" * 32, "42", ("d-1",), (), 1_767_323_045_000)
>>> decode_request(encode_request(r)) == r
True
>>> decode_request(b'{"type":"erasure","request_id":"x","customer_id":"42","ts":1}')
Traceback (most recent call last):
...
schemas.erasure.ErasureDecodeError: request_id: expected 32 lower-case hex digits
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

import msgspec

from schemas.events import MAX_ID_LEN, format_ts

#: What marks an erasure record in the input (the event decoder calls it ``unknown_type``).
MARKER: Final = b'"type":"erasure"'
#: Most devices and identifiers one request names.
MAX_LINKED: Final = 1000
_REQUEST_ID: Final = re.compile(r"[0-9a-f]{32}")


class ErasureDecodeError(ValueError):
    """A record marked as an erasure that is not a valid one."""


class ErasureRequest(msgspec.Struct, frozen=True, array_like=True):
    """Forget ``customer_id``, its devices and identifiers (``ts``: when it was asked, ms)."""

    request_id: str
    customer_id: str
    anonymous_ids: tuple[str, ...]
    identifiers: tuple[str, ...]
    ts: int


class _Wire(msgspec.Struct, kw_only=True):
    type: str
    request_id: str
    customer_id: str
    ts: int
    anonymous_ids: list[str] = []
    identifiers: list[str] = []


_decoder: Final = msgspec.json.Decoder(_Wire)


def _ids(name: str, values: list[str]) -> tuple[str, ...]:
    if len(values) > MAX_LINKED:
        raise ErasureDecodeError(f"{name}: more than {MAX_LINKED}")
    for v in values:
        if not v or len(v) > MAX_ID_LEN:
            raise ErasureDecodeError(f"{name}: empty or longer than {MAX_ID_LEN}")
    return tuple(sorted(set(values)))


def decode_request(data: bytes) -> ErasureRequest:
    """Parse and check an erasure record; :class:`ErasureDecodeError` says what is wrong."""
    try:
        w = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ErasureDecodeError(str(exc)[:200]) from None
    if w.type != "erasure":
        raise ErasureDecodeError("type: expected erasure")
    if not _REQUEST_ID.fullmatch(w.request_id):
        raise ErasureDecodeError("request_id: expected 32 lower-case hex digits")
    if not w.customer_id or len(w.customer_id) > MAX_ID_LEN:
        raise ErasureDecodeError(f"customer_id: empty or longer than {MAX_ID_LEN}")
    return ErasureRequest(
        w.request_id,
        w.customer_id,
        _ids("anonymous_ids", w.anonymous_ids),
        _ids("identifiers", w.identifiers),
        w.ts,
    )


def encode_request(r: ErasureRequest) -> bytes:
    """The record as written to the input topic."""
    return msgspec.json.encode(
        {
            "type": "erasure",
            "request_id": r.request_id,
            "customer_id": r.customer_id,
            "anonymous_ids": list(r.anonymous_ids),
            "identifiers": list(r.identifiers),
            "ts": r.ts,
        }
    )


def new_request(
    customer_id: str, devices: tuple[str, ...], tokens: tuple[str, ...], now_ms: int
) -> tuple[ErasureRequest, dict[str, Any]]:
    """A new request (a fresh id, asked at ``now_ms``) and its ``pending`` status document.

    >>> req, doc = new_request("42", ("d-1",), (), 0)
    >>> doc["request_id"] == req.request_id, doc["status"]
    (True, 'pending')
    """
    rid = uuid.uuid4().hex
    return ErasureRequest(rid, customer_id, devices, tokens, now_ms), status_document(
        rid, "pending", now_ms
    )


def status_key(request_id: str) -> str:
    """Redis key of a request's status (its own slot in Redis Cluster).

    >>> status_key("ab" * 16)
    'nb:{erasure:abababababababababababababababab}:status'
    """
    return f"nb:{{erasure:{request_id}}}:status"


#: How long a status is kept after it is written (seconds): 30 days.
STATUS_TTL_S: Final = 30 * 86_400


def status_document(
    request_id: str, status: str, requested_at: int, done_at: int | None = None, steps: int = 0
) -> dict[str, Any]:
    """The status as stored and answered by ``GET /v1/erasures/{request_id}``.

    >>> status_document("ab" * 16, "pending", 0)["requested_at"]
    '1970-01-01T00:00:00Z'
    """
    return {
        "request_id": request_id,
        "status": status,
        "requested_at": format_ts(requested_at),
        "done_at": None if done_at is None else format_ts(done_at),
        "steps": steps,
    }

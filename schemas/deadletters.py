"""The dead-letter record: one JSON line per rejected input, shared by the dataflow and the
collect endpoint (``POST /v1/events``), so both write the same bytes for the same rejection.

Fields: ``reason`` and ``detail`` (:class:`schemas.events.DecodeError`), ``position`` (where the
input came from), ``rejected_at_ms``, and the original bytes as ``data`` (text) or
``data_base64`` (not UTF-8). A record over the bound keeps the longest prefix of the bytes that
fits and says so: ``truncated: true``, ``original_size`` and ``sha256`` (of the whole), so a
poison message can still be identified and never makes a record the broker refuses.

>>> encode(b"{", DecodeError("invalid_json"), "http:x:0", 4096, 0)
b'{"reason":"invalid_json","detail":"","position":"http:x:0","rejected_at_ms":0,"data":"{"}'
>>> out = encode(b"\\x01" * 200_000, DecodeError("too_large"), "kafka:t:0:7", 4096, 0)
>>> len(out) <= 4096, orjson.loads(out)["truncated"], orjson.loads(out)["original_size"]
(True, True, 200000)
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

import orjson

from schemas.events import DecodeError

#: Default bound of one dead-letter record (``NEXTBEST_DEAD_LETTER_MAX_BYTES``).
MAX_BYTES: Final = 65_536


def document(raw: bytes, error: DecodeError, position: str, now_ms: int) -> dict[str, Any]:
    """The record as a mapping, with ``raw`` as the original bytes."""
    doc: dict[str, Any] = {
        "reason": error.reason,
        "detail": error.detail,
        "position": position,
        "rejected_at_ms": now_ms,
    }
    try:
        doc["data"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        doc["data_base64"] = base64.b64encode(raw).decode("ascii")
    return doc


def utf8_prefix(data: bytes, n: int) -> bytes:
    """The first ``n`` bytes, without a UTF-8 sequence cut in half at the end (when the whole
    is UTF-8, so that the prefix still reads as text).

    >>> utf8_prefix("aé".encode(), 2)
    b'a'
    """
    head = data[:n]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return head
    return head.decode("utf-8", "ignore").encode("utf-8")


def encode(data: bytes, error: DecodeError, position: str, max_bytes: int, now_ms: int) -> bytes:
    """One record as a JSON line (without the newline), at most ``max_bytes``."""
    whole = orjson.dumps(document(data, error, position, now_ms))
    if len(whole) <= max_bytes:
        return whole
    extra = {
        "truncated": True,
        "original_size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }

    def encoded(n: int) -> bytes:
        doc = document(utf8_prefix(data, n), error, position, now_ms)
        doc.update(extra)
        return orjson.dumps(doc)

    # The longest prefix that fits (escaping can grow a byte up to 6 times): binary search.
    lo, hi = 0, min(len(data), max_bytes)
    best = encoded(0)
    while lo <= hi:
        mid = (lo + hi) // 2
        out = encoded(mid)
        if len(out) <= max_bytes:
            best, lo = out, mid + 1
        else:
            hi = mid - 1
    return best

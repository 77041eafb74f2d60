"""Admin imports over HTTP: ``POST /v1/catalog`` and ``POST /v1/traits`` (scope ``admin``).

The same as ``nextbest catalog load`` and ``nextbest import-traits``, for a CRM, ERP or shop
back office that pushes its exports: the body is the file, CSV with a header row (``text/csv``)
or JSON lines (``application/x-ndjson``), at most :data:`MAX_IMPORT_BYTES`. The answer is a
report, 200, also when rows were rejected: ``loaded`` / ``accepted``, ``rejected``, and the first
100 rejected rows with their line, reason and detail (the rows that were good are applied; a
catalogue without any good row is left as it was).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Query, Request

from features.catalog import RowError, encode_item, parse_lines
from features.store import CATALOG_KEY, CATALOG_VERSION_KEY
from schemas.events import encode_event
from serving.auth import guarded
from serving.deps import RedisDep
from serving.errors import ApiError, error_responses
from serving.producer import BrokerUnavailable, OutRecord

#: Largest import body, in bytes.
MAX_IMPORT_BYTES: Final = 20 * 1024 * 1024
#: Rejected rows listed in an answer (the rest are counted).
MAX_LISTED: Final = 100

_KINDS: Final = {"text/csv": "csv", "application/x-ndjson": "jsonl"}
_BODY: Final[dict[str, Any]] = {
    "required": True,
    "description": f"The file: CSV with a header row (`text/csv`) or JSON lines; at most "
    f"{MAX_IMPORT_BYTES} bytes.",
    "content": {
        "text/csv": {"schema": {"type": "string", "minLength": 1}},
        "application/x-ndjson": {"schema": {"type": "string", "minLength": 1}},
    },
}


async def _lines(request: Request) -> tuple[list[str], str]:
    """The body's lines and its kind (``csv`` or ``jsonl``); 415 for another content type, 422
    when empty, 413 when too large, 400 when it is not UTF-8."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _KINDS:
        raise ApiError(415, "unsupported_media_type", f"send {' or '.join(_KINDS)}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise ApiError(413, "too_large", f"the body is over {MAX_IMPORT_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"the body is not UTF-8: {exc}") from None
    if not text:
        raise ApiError(422, "empty_body", "the body holds no row")
    return text.splitlines(), _KINDS[ctype]


def _report(errors: list[RowError]) -> dict[str, Any]:
    return {
        "rejected": len(errors),
        "rejected_by_reason": dict(Counter(e.reason for e in errors)),
        "rejected_rows": [
            {"line": e.line, "reason": e.reason, "detail": e.detail} for e in errors[:MAX_LISTED]
        ],
    }


router = APIRouter(tags=["imports"])


@router.post(
    "/v1/catalog",
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra={"requestBody": _BODY},
    summary="Replace the product catalogue (as nextbest catalog load)",
)
async def load_catalog(request: Request, redis: RedisDep) -> dict[str, Any]:
    """The good rows replace the catalogue at once (a temporary key renamed over it); serving
    notices the new version on its next answer."""
    lines, kind = await _lines(request)
    items, errors = parse_lines(lines, kind)
    out: dict[str, Any] = {"loaded": len(items), "version": None, **_report(errors)}
    if not items:
        return out
    tmp = f"{CATALOG_KEY}:loading:{uuid.uuid4().hex}"  # (the catalogue's slot: {catalog})
    pipe = redis.pipeline(transaction=False)
    for i in range(0, len(items), 1000):
        pipe.hset(tmp, mapping={it.product_id: encode_item(it) for it in items[i : i + 1000]})
    await pipe.execute()
    await redis.rename(tmp, CATALOG_KEY)  # (a cluster client refuses RENAME in a pipeline)
    version = uuid.uuid4().hex
    await redis.set(CATALOG_VERSION_KEY, version)
    out["version"] = version
    return out


@router.post(
    "/v1/traits",
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra={"requestBody": _BODY},
    summary="Import traits from a source system (as nextbest import-traits)",
)
async def import_traits(
    request: Request,
    source: Annotated[
        str,
        Query(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="The source system, e.g. crm."),
    ],
) -> dict[str, Any]:
    """Each good row becomes an ``identify`` event of ``source`` on the clickstream topic (the
    same path as ``POST /v1/events``: emails and phones leave as tokens)."""
    from features.trait_rows import parse_rows

    collector = getattr(request.app.state, "collect", None)
    if collector is None:
        raise ApiError(503, "collect_disabled", str(request.app.state.collect_disabled))
    lines, kind = await _lines(request)
    events, errors, _rejected = parse_rows(lines, kind, source, time.time_ns() // 10**6,
                                           collector.ids)  # fmt: skip
    records = [OutRecord(collector.clickstream, ev.key.encode(), encode_event(ev))
               for _, ev in events]  # fmt: skip
    try:
        await collector.producer.send(records)
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", f"not written: {exc.detail}") from None
    return {"source": source, "accepted": len(events), **_report(errors)}


def install_imports(app: FastAPI) -> None:
    """Add the routes (scope ``admin``)."""
    app.include_router(router, **guarded("admin"))

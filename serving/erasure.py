"""Erasure routes: ``DELETE /v1/customers/{customer_id}`` and ``GET /v1/erasures/{request_id}``.

The request is written to the transactions topic, keyed by the customer (the dataflow applies
it in order with the customer's events, see :mod:`schemas.erasure`), after a ``pending`` status
is stored in Redis; the answer is 202 with the request id. The dataflow sets the status to
``done`` when every step has applied it. Both routes need the ``admin`` scope.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Annotated, Any, cast

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from features.store import aread_stored_profile, devices_key
from schemas.erasure import (
    STATUS_TTL_S,
    encode_request,
    new_request,
    status_key,
)
from schemas.events import MAX_ID_LEN
from schemas.identifiers import is_token
from schemas.keys import customer_key
from serving.auth import guarded
from serving.deps import RedisDep
from serving.errors import ApiError, error_responses
from serving.producer import BrokerUnavailable, OutRecord


class ErasureBody(BaseModel):
    """An erasure request's status."""

    request_id: str = Field(description="The request id (32 hex digits).")
    status: str = Field(description="`pending` until every step applied it, then `done`.")
    requested_at: str = Field(description="When it was asked (RFC 3339).")
    done_at: str | None = Field(description="When the last step applied it; null while pending.")
    steps: int = Field(description="Steps that applied it (when done).")


def linked_of(
    view: Any, linked: Iterable[bytes | str] = ()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The devices and identifier tokens of a customer: its stored profile's links and traits,
    and ``linked``, every device or identifier ever linked to it (``nb:{c:<id>}:devices``)."""
    names = {x.decode() if isinstance(x, bytes) else x for x in linked}
    tokens = {n for n in names if is_token(n)}
    devices = names - tokens
    if view is None:
        return tuple(sorted(devices)), tuple(sorted(tokens))
    devices |= {link.anonymous_id for link in view.identities}
    for name, trait in getattr(view, "traits", {}).items():
        value = trait[0] if isinstance(trait, tuple | list) else trait
        if name in ("email", "phone") and isinstance(value, str):
            tokens.add(value)
    return tuple(sorted(devices)), tuple(sorted(tokens))


async def submit(
    app: FastAPI, client: aioredis.Redis, customer_id: str, now_ms: int
) -> dict[str, Any]:
    """Store a pending status, then write the request to the input; the status document."""
    collector = getattr(app.state, "collect", None)
    if collector is None:
        raise ApiError(503, "erasure_unavailable",
                       "this server has no Kafka broker to send the erasure through")  # fmt: skip
    key = customer_key(customer_id)
    stored = await aread_stored_profile(client, key)
    devices, tokens = linked_of(stored.view, await client.smembers(devices_key(key)))
    req, doc = new_request(customer_id, devices, tokens, now_ms)
    rid = req.request_id
    await client.set(status_key(rid), orjson.dumps(doc), ex=STATUS_TTL_S)
    record = OutRecord(collector.transactions, customer_key(customer_id).encode(),
                       encode_request(req))  # fmt: skip
    try:
        await collector.producer.send([record])
    except BrokerUnavailable as exc:
        await client.delete(status_key(rid))
        raise ApiError(
            503, "broker_unavailable", f"the erasure was not sent: {exc.detail}"
        ) from None
    return doc


router = APIRouter(tags=["privacy"])


@router.delete(
    "/v1/customers/{customer_id}",
    status_code=202,
    response_model=ErasureBody,
    responses=error_responses(422, 503),
    summary="Forget a customer everywhere the engine keeps data",
)
async def erase_customer(
    customer_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)],
    request: Request,
    redis: RedisDep,
) -> JSONResponse:
    """Send an erasure through the stream (profile, devices, identifiers, segments, pending
    labels and examples, decision joins, contact counters); 202 with the request id, whose
    status ``GET /v1/erasures/{request_id}`` answers. Events for the id that arrive after the
    erasure start a new profile."""
    now_ms = time.time_ns() // 1_000_000
    body = await submit(request.app, redis, customer_id, now_ms)
    location = f"/v1/erasures/{body['request_id']}"
    return JSONResponse(body, status_code=202, headers={"Location": location})


@router.get(
    "/v1/erasures/{request_id}",
    response_model=ErasureBody,
    responses=error_responses(404, 422, 503),
    summary="An erasure request's status",
)
async def erasure_status(
    request_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    redis: RedisDep,
) -> dict[str, Any]:
    """``pending`` until every step of the dataflow applied it, then ``done`` (kept 30 days)."""
    raw = await redis.get(status_key(request_id))
    if raw is None:
        raise ApiError(404, "not_found", f"no erasure request {request_id!r}")
    return cast(dict[str, Any], orjson.loads(raw))


def install_erasure(app: FastAPI) -> None:
    """Add the routes (scope ``admin``)."""
    app.include_router(router, **guarded("admin"))

"""The dependencies every route shares: the Redis client, the clock, ``as_of`` parsing, and the
JSON answer of the decision and recommendation routes.

Tests override :func:`get_redis` and :func:`get_now_ms` through ``app.dependency_overrides``
(they are also importable from :mod:`serving.app`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, cast

import orjson
import redis.asyncio as aioredis
from fastapi import Depends, Request, Response

from schemas.events import parse_as_of as parse_as_of_text
from serving.errors import ApiError


def get_redis(request: Request) -> aioredis.Redis:
    """Dependency: the app's Redis client (created by the lifespan)."""
    client = getattr(request.app.state, "redis", None)
    if client is None:
        raise RuntimeError("no Redis client: run the app with its lifespan")
    return cast(aioredis.Redis, client)


def get_now_ms() -> int:
    """Dependency: the wall clock in epoch milliseconds (the default ``as_of``)."""
    return time.time_ns() // 1_000_000


def parse_as_of(raw: str) -> int:
    """Epoch ms from an ``as_of`` query value (RFC 3339 with a zone, or epoch milliseconds).

    A ``+hh:mm`` zone whose ``+`` arrived unencoded (decoded as a space) is accepted.

    >>> parse_as_of("2026-01-02T03:04:05Z"), parse_as_of("1767323045000")
    (1767323045000, 1767323045000)
    >>> parse_as_of("2026-01-02T04:04:05 01:00")
    1767323045000
    >>> parse_as_of("yesterday")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.errors.ApiError: as_of 'yesterday': expected RFC 3339 with a zone ...
    """
    ms = parse_as_of_text(raw)
    if ms is None:
        raise ApiError(
            422,
            "bad_as_of",
            f"as_of {raw[:40]!r}: expected RFC 3339 with a zone (e.g. 2026-01-02T03:04:05Z) "
            "or epoch milliseconds, between 1970-01-01 and 2100-01-01",
        )
    return ms


def json_answer(body: dict[str, Any]) -> Response:
    """An answer as JSON, serialised by orjson (FastAPI's generic encoder walks every nested
    value in Python: most of a decision's CPU time)."""
    return Response(orjson.dumps(body), media_type="application/json")


RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
NowDep = Annotated[int, Depends(get_now_ms)]

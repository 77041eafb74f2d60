"""The dependencies every route shares: the Redis client, the clock, ``as_of`` parsing, and the
JSON answer of the decision and recommendation routes.

Tests override :func:`get_redis` and :func:`get_now_ms` through ``app.dependency_overrides``
(they are also importable from :mod:`serving.app`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final, cast

import orjson
import redis.asyncio as aioredis
from fastapi import Depends, Query, Request, Response

from schemas.events import parse_as_of as parse_as_of_text
from schemas.jsonschema import HH_MM, MID_LEAP, MID_YEAR, MONTH_DAY
from serving.errors import AS_OF_HELP, ApiError


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
        raise ApiError(422, "bad_as_of", f"as_of {raw[:40]!r}: {AS_OF_HELP}")
    return ms


def json_answer(body: dict[str, Any]) -> Response:
    """An answer as JSON, serialised by orjson (FastAPI's generic encoder walks every nested
    value in Python: most of a decision's CPU time)."""
    return Response(orjson.dumps(body), media_type="application/json")


# The exact language of ``as_of``, stated in the OpenAPI document so that every value valid by
# the schema is accepted (a schema-driven fuzzer checks it): epoch milliseconds below
# 4102444800000 (2100-01-01), or an RFC 3339 date-time of 1971-2098 (a zone offset cannot move
# it out of the range) with a real calendar day, up to 6 fractional digits, and a zone (``Z`` or
# ``+hh:mm``; a space for the ``+`` of an unencoded query string).
_EPOCH: Final = (
    r"[0-9]{1,12}|[0-3][0-9]{12}|40[0-9]{11}|410[01][0-9]{9}|4102[0-3][0-9]{8}"
    r"|41024[0-3][0-9]{7}|410244[0-3][0-9]{6}|4102444[0-7][0-9]{5}"
)
# (the calendar pieces are the event contract's, schemas.jsonschema: one definition of a date)
_DAY: Final = rf"(?:{MID_YEAR}-{MONTH_DAY}|{MID_LEAP}-02-29)"
_TIME: Final = rf"T{HH_MM}:[0-5][0-9](?:\.[0-9]{{1,6}})?(?:Z|[+\- ]{HH_MM})"
#: The pattern of an ``as_of`` query value (see :func:`parse_as_of`).
AS_OF_PATTERN: Final = rf"^(?:{_EPOCH}|{_DAY}{_TIME})$"

#: An ``as_of`` query parameter: its pattern is the exact set :func:`parse_as_of` accepts.
AsOfQ = Annotated[
    str | None,
    Query(
        description="Render as of this time: epoch milliseconds (below 4102444800000), or an "
        "RFC 3339 date-time from 1971 to 2098 with a zone (`Z` or `+hh:mm`). Default: now.",
        pattern=AS_OF_PATTERN,
        examples=["2026-01-02T03:04:05Z", "1767323045000"],
    ),
]

RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
NowDep = Annotated[int, Depends(get_now_ms)]

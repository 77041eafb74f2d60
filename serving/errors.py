"""Error bodies and handlers: every error the API returns is ``{"error": code, "detail": text}``.

``error`` is machine readable and drawn from a small fixed set (``not_found``, ``bad_as_of``,
``unknown_segment``, ``bad_cursor``, ``unauthorized``, ``forbidden``, ``cors_rejected``,
``validation_error``, ``method_not_allowed``, ``redis_unavailable``, ``redis_error``,
``internal_error``, ``http_<status>``); ``detail`` is for humans.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

#: Machine-readable codes of plain HTTP errors raised by routing (unknown route, wrong method).
_HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed"}
_MAX_DETAIL: Final = 500


class ErrorBody(BaseModel):
    """An error response."""

    error: str = Field(description="Machine-readable error code.", examples=["not_found"])
    detail: str = Field(
        description="Human-readable explanation.", examples=["no profile for customer '42'"]
    )


class ApiError(Exception):
    """An error with its HTTP status and machine-readable code, rendered as :class:`ErrorBody`."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.headers = headers


def error_response(
    status_code: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON response with an :class:`ErrorBody`."""
    body = {"error": error, "detail": detail[:_MAX_DETAIL]}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _error_cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.error, exc.detail, headers=exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


#: What a bad ``as_of`` is told (its schema pattern and :func:`serving.deps.parse_as_of`).
AS_OF_HELP: Final = (
    "expected RFC 3339 with a zone (e.g. 2026-01-02T03:04:05Z) from 1971 to 2098, or epoch "
    "milliseconds below 4102444800000 (2100-01-01)"
)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    for err in exc.errors():  # as_of keeps its own code, whichever check refused it
        if tuple(err.get("loc", ())) == ("query", "as_of"):
            raw = str(err.get("input", ""))
            return error_response(422, "bad_as_of", f"as_of {raw[:40]!r}: {AS_OF_HELP}")
    return error_response(422, "validation_error", _validation_detail(exc))


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return error_response(503, "redis_unavailable", f"redis unreachable: {_error_cause(exc)}")


async def _redis_error(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis error: %s", _error_cause(exc))
    return error_response(503, "redis_error", f"redis error: {_error_cause(exc)}")


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into an :class:`ErrorBody`."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisConnectionError, _redis_unavailable)
    app.add_exception_handler(RedisTimeoutError, _redis_unavailable)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(Exception, _internal_error)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting :class:`ErrorBody` for the given statuses."""
    descriptions = {
        401: "No API key, or an unknown one (when the server has keys)",
        403: "The API key lacks the route's scope",
        404: "Not found",
        422: "Invalid request",
        503: "A dependency (Redis) is unavailable",
    }
    return {c: {"model": ErrorBody, "description": descriptions.get(c, "Error")} for c in codes}

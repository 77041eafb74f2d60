"""CORS for the routes a browser calls: collect, decisions and recommendations.

Origins come from ``NEXTBEST_CORS_ORIGINS``; other routes get no CORS headers at all (a browser
on another origin cannot read profiles or segment lists, whatever key it has). Preflight
requests (``OPTIONS`` with ``Access-Control-Request-Method``) are answered here, before any API
key check: browsers send them without credentials. A refused preflight (origin, method or
header not allowed) gets 400 with the error body of every other error (``cors_rejected``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: The paths CORS applies to (``POST /v1/events``, next best action, recommendations).
CORS_PATHS: Final = re.compile(
    r"/v1/events|/v1/(?:customers|visitors)/[^/]+/(?:next-best-action|recommendations)"
    r"|/v1/products/[^/]+/similar"
)
#: Request headers a browser may send on those routes.
ALLOWED_HEADERS: Final = ("Content-Type", "Authorization", "X-API-Key")


class RouteCORS(CORSMiddleware):
    """Starlette's CORS middleware, applied to :data:`CORS_PATHS` only.

    >>> RouteCORS.applies("/v1/events"), RouteCORS.applies("/v1/customers/42/profile")
    (True, False)
    """

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(ALLOWED_HEADERS),
            max_age=600,
        )
        self.inner = app

    @staticmethod
    def applies(path: str) -> bool:
        """Whether CORS applies to a request path."""
        return CORS_PATHS.fullmatch(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.applies(scope["path"]):
            await super().__call__(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        """Starlette's answer, with a JSON error body when the preflight is refused."""
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        detail = bytes(answer.body).decode("utf-8", "replace")
        body = orjson.dumps({"error": "cors_rejected", "detail": detail})
        headers = {
            k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")
        }
        return Response(body, answer.status_code, headers, media_type="application/json")

"""One HTTP POST to a webhook, classified: success, retriable or not, and why.

A connection to each destination is kept alive between records. A kept-alive connection that
the server closed while idle is detected when the request fails before any response byte and is
retried once on a fresh connection (the same attempt: the request had not been received).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from nextbest import __version__

#: Response bytes read (and dropped) so the connection can be reused; a longer body closes it.
MAX_RESPONSE_BYTES = 65_536


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to.

    ``outcome`` is a metric label (a finite set): ``success``, ``client_error`` (4xx other than
    408/429, and 1xx/3xx: not retried), ``throttled`` (408, 429), ``server_error`` (5xx),
    ``timeout``, ``connection_error``.
    """

    outcome: str
    status: int | None
    error: str
    seconds: float
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    @property
    def retriable(self) -> bool:
        return self.outcome in ("throttled", "server_error", "timeout", "connection_error")


def classify(status: int) -> str:
    """The outcome of an HTTP status.

    >>> {s: classify(s) for s in (200, 204, 301, 404)}
    {200: 'success', 204: 'success', 301: 'client_error', 404: 'client_error'}
    >>> {s: classify(s) for s in (408, 429, 500, 503)}
    {408: 'throttled', 429: 'throttled', 500: 'server_error', 503: 'server_error'}
    """
    if 200 <= status < 300:
        return "success"
    if status in (408, 429):
        return "throttled"
    if status >= 500:
        return "server_error"
    return "client_error"


class Endpoint:
    """A webhook URL with a kept-alive connection."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, body: bytes, headers: dict[str, str]) -> Attempt:
        """POST ``body``; never raises for network or HTTP errors."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"nextbest/{__version__}",
            **headers,
        }
        t0 = time.perf_counter()
        for fresh_retry in (False, True):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("POST", self._path, body=body, headers=headers)
                response = self._conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and not fresh_retry:  # the server closed an idle connection
                    continue
                return Attempt("connection_error", None, _describe(exc), time.perf_counter() - t0)
            except TimeoutError as exc:
                self.close()
                return Attempt("timeout", None, _describe(exc) or "timed out",
                               time.perf_counter() - t0)  # fmt: skip
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                return Attempt("connection_error", None, _describe(exc), time.perf_counter() - t0)
            return self._finish(response, t0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish(self, response: http.client.HTTPResponse, t0: float) -> Attempt:
        status = response.status
        retry_after = response.getheader("Retry-After")
        try:
            data = response.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException):
            # the status line decides (a 2xx: the receiver took the record); only the
            # connection is lost
            data = b""
            self.close()
        if len(data) > MAX_RESPONSE_BYTES or response.will_close:
            self.close()
        seconds = time.perf_counter() - t0
        outcome = classify(status)
        error = "" if outcome == "success" else f"HTTP {status} {response.reason}".strip()
        if error and data:
            error += ": " + data[:200].decode("utf-8", "replace").strip()
        return Attempt(outcome, status, error, seconds, retry_after)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text

"""API keys and scopes: who may call which route of the HTTP API.

Keys live in a YAML file (``NEXTBEST_API_KEYS``) that holds only their SHA-256, never the keys::

    keys:
      - name: website            # shown in errors and logs instead of the key
        sha256: 9f86d0...        # 64 hex digits: sha256(key); `nextbest keys new` prints both
        scopes: [collect]

Scopes (:data:`SCOPES`): ``collect`` (``POST /v1/events``; safe to embed in a browser), ``read``
(profiles, models, segments, decisions, recommendations) and ``admin`` (targeted lists: segment
members; erasure). A key has the scopes listed, no more: ``admin`` does not imply ``read``.

A caller presents its key as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. A missing
or unknown key is answered 401 ``unauthorized``, a key without the route's scope 403
``forbidden``, both with the error body of every other error. The presented key is hashed and
compared with every configured hash in constant time (:func:`hmac.compare_digest`, all keys, no
early exit); it is never logged or echoed.

Keys are random (``nbk_`` + 43 URL-safe characters, 256 bits), so a plain SHA-256 is enough: a
slow password hash protects guessable secrets, which these are not.

Examples
--------
>>> k = new_key()
>>> ring = KeyRing((ApiKey("site", key_digest(k), frozenset({"collect"})),))
>>> ring.find(k).name, ring.find("nbk_wrong")
('site', None)
>>> k.startswith("nbk_"), len(k)
(True, 47)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.errors import ApiError

log = logging.getLogger(__name__)

#: Every scope a key can have.
SCOPES: Final = ("collect", "read", "admin")
#: Longest key accepted (longer ones are unknown without being hashed).
MAX_KEY_LEN: Final = 256
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class AuthConfigError(ValueError):
    """A bad keys file or auth setting: names the file (or setting), line and field."""

    def __init__(self, where: str, line: int | None, field: str | None, message: str) -> None:
        loc = f"{where}:{line}" if line is not None else where
        super().__init__(f"{loc}: {field}: {message}" if field else f"{loc}: {message}")
        self.where, self.line, self.field, self.message = where, line, field, message


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its name, the SHA-256 of the key, and its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[str]


def key_digest(key: str) -> bytes:
    """SHA-256 of a key (what the keys file stores, in hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return "nbk_" + secrets.token_urlsafe(32)


class KeyRing:
    """The configured keys; :meth:`find` compares in constant time."""

    __slots__ = ("keys",)

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash is the presented key's, else ``None``. Every configured hash is
        compared (no early exit), each in constant time."""
        if len(presented) > MAX_KEY_LEN:
            return None
        digest = key_digest(presented)
        found: ApiKey | None = None
        for k in self.keys:
            if hmac.compare_digest(digest, k.digest) and found is None:
                found = k
        return found


def load_keys(path: str | Path) -> KeyRing:
    """Read and validate a keys file; :class:`AuthConfigError` names the file, line and field.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "keys.yaml")
    >>> _ = open(p, "w").write("keys:\\n  - name: site\\n    sha256: abc\\n    scopes: [read]\\n")
    >>> load_keys(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.auth.AuthConfigError: ...keys.yaml:3: keys[0].sha256: expected 64 hex digits ...
    """
    from features.segments.config import YamlError, line_of, load_yaml

    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError(name, None, None, f"cannot read: {e}") from None
    try:
        doc = load_yaml(text)
    except YamlError as e:
        raise AuthConfigError(name, e.line, None, e.message) from None
    if not isinstance(doc, dict) or set(doc) != {"keys"}:
        raise AuthConfigError(name, None, None, "expected a mapping with one field, keys")
    items = doc["keys"]
    if not isinstance(items, list) or not items:
        raise AuthConfigError(name, line_of(doc, "keys"), "keys", "expected a non-empty list")
    out: list[ApiKey] = []
    for i, item in enumerate(items):
        out.append(_key(name, i, item, line_of(items, i), line_of))
    names = [k.name for k in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise AuthConfigError(name, line_of(items, i), f"keys[{i}].name", f"{n!r} twice")
    return KeyRing(tuple(out))


def _key(file: str, i: int, item: Any, line: int | None, line_of: Callable[..., Any]) -> ApiKey:
    where = f"keys[{i}]"
    if not isinstance(item, dict):
        raise AuthConfigError(file, line, where, "expected a mapping with name, sha256, scopes")
    for f in item:
        if f not in ("name", "sha256", "scopes"):
            raise AuthConfigError(file, line_of(item, f), f"{where}.{f}", "unknown field")
    name, digest, scopes = item.get("name"), item.get("sha256"), item.get("scopes")
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise AuthConfigError(file, line_of(item, "name"), f"{where}.name",
                              "expected 1-64 of a-z, 0-9, '-', '_', '.'")  # fmt: skip
    raw = bytes.fromhex(digest) if isinstance(digest, str) and _is_hex64(digest) else None
    if raw is None:
        raise AuthConfigError(file, line_of(item, "sha256"), f"{where}.sha256",
                              "expected 64 hex digits (the key's SHA-256; the key itself is "
                              "never stored)")  # fmt: skip
    if not isinstance(scopes, list) or not scopes or not all(s in SCOPES for s in scopes):
        raise AuthConfigError(file, line_of(item, "scopes"), f"{where}.scopes",
                              f"expected a non-empty list of {', '.join(SCOPES)}")  # fmt: skip
    return ApiKey(name, raw, frozenset(scopes))


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s)


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.1.2.3")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_for(mode: str, keys_file: str | None, host: str) -> KeyRing | None:
    """The keys ``serve`` enforces (``None``: no checks), or :class:`AuthConfigError` when the
    settings do not allow serving on ``host`` (see ``NEXTBEST_AUTH`` in the README).

    >>> auth_for("auto", None, "127.0.0.1") is None
    True
    >>> auth_for("auto", None, "0.0.0.0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.auth.AuthConfigError: NEXTBEST_API_KEYS: serve binds 0.0.0.0, not a loopback ...
    >>> auth_for("off", None, "10.0.0.5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.auth.AuthConfigError: NEXTBEST_AUTH: off is for the embedded demo only: ...
    """
    if mode == "off":
        if not is_loopback(host):
            raise AuthConfigError("NEXTBEST_AUTH", None, None,
                                  f"off is for the embedded demo only: serve binds {host}, not "
                                  "a loopback address; configure NEXTBEST_API_KEYS")  # fmt: skip
        return None
    if keys_file is not None:
        return load_keys(keys_file)
    if mode == "on":
        why = "NEXTBEST_AUTH=on needs a keys file (`nextbest keys new`)"
        raise AuthConfigError("NEXTBEST_API_KEYS", None, None, why)
    if not is_loopback(host):
        raise AuthConfigError("NEXTBEST_API_KEYS", None, None,
                              f"serve binds {host}, not a loopback address, without API keys: "
                              "set NEXTBEST_API_KEYS (`nextbest keys new` makes one)")  # fmt: skip
    return None


_X_API_KEY: Final = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="ApiKey", description="An API key."
)
_BEARER: Final = HTTPBearer(
    auto_error=False, scheme_name="Bearer", description="An API key as a bearer token."
)
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="nextbest"'}


def require(scope: str) -> Callable[..., Awaitable[None]]:
    """A route dependency: the caller's key must have ``scope`` (nothing is checked when the
    app has no keys, ``app.state.auth is None``). Failures are counted by reason in
    ``nextbest_http_auth_failures_total`` (``missing``, ``unknown``, ``scope``)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def check(
        request: Request,
        api_key: Annotated[str | None, Security(_X_API_KEY)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    ) -> None:
        ring: KeyRing | None = getattr(request.app.state, "auth", None)
        if ring is None:
            return
        presented = api_key or (bearer.credentials if bearer is not None else None)
        failures = request.app.state.metrics.auth_failures
        if not presented:
            failures.labels("missing").inc()
            raise ApiError(401, "unauthorized",
                           "an API key is required: header X-API-Key or Authorization: Bearer",
                           headers=_CHALLENGE)  # fmt: skip
        key = ring.find(presented)
        if key is None:
            failures.labels("unknown").inc()
            raise ApiError(401, "unauthorized", "unknown API key", headers=_CHALLENGE)
        if scope not in key.scopes:
            failures.labels("scope").inc()
            raise ApiError(403, "forbidden", f"the key {key.name!r} lacks the scope {scope!r}")

    check.__name__ = f"require_{scope}"
    return check


def guarded(scope: str) -> dict[str, Any]:
    """``include_router``/route keyword arguments that guard routes with ``scope`` and document
    the 401 and 403 answers in the OpenAPI document."""
    from fastapi import Depends

    from serving.errors import error_responses

    return {"dependencies": [Depends(require(scope))], "responses": error_responses(401, 403)}

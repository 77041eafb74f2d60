"""The webhook configuration (``NEXTBEST_WEBHOOKS``): a YAML file of destinations, validated at
start; an error names the file and the field.

.. code-block:: yaml

    defaults:                       # optional; each destination may override any of these
      timeout: 5s                   # one HTTP attempt (connect, send, each read)
      max_attempts: 8               # the first attempt included
      backoff_base: 500ms           # wait after the n-th failure: uniform in
      backoff_cap: 60s              #   [0, min(cap, base * 2**(n-1))]
    destinations:
      - name: crm                   # [a-z0-9_-], the metrics' destination label
        url: https://crm.example.com/hooks/nextbest
        segments: [cart_abandoned, at_risk]   # or "*" for every segment
        secret_env: CRM_WEBHOOK_SECRET        # the variable holding the shared secret

The secret itself is never in the file: ``secret_env`` names the environment variable that holds
it, and a variable that is unset or empty stops the command at start.

>>> env = {"S": "k"}
>>> cfg = parse_webhooks({"destinations": [{"name": "crm", "url": "http://h:1/x",
...                       "segments": ["at_risk"], "secret_env": "S"}]}, "w.yaml", env)
>>> [d.name for d in cfg.for_segment("at_risk")], cfg.for_segment("lapsed_30d")
(['crm'], [])
>>> try:
...     parse_webhooks({"destinations": [{"name": "crm", "url": "ftp://h", "segments": "*",
...                     "secret_env": "S"}]}, "w.yaml", env)
... except WebhookConfigError as exc:
...     print(exc)
w.yaml: destinations[0].url: expected an http:// or https:// URL with a host, got 'ftp://h'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nextbest.settings import duration_ms


class WebhookConfigError(ValueError):
    """A bad webhook configuration; the message names the file and the field."""


@dataclass(frozen=True)
class Destination:
    """One webhook: where to POST which segments' transitions, and how hard to try."""

    name: str
    url: str
    segments: frozenset[str] | None  # None: every segment
    secret: str
    secret_env: str
    timeout_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float

    def wants(self, segment: str) -> bool:
        """Whether this destination receives transitions of ``segment``."""
        return self.segments is None or segment in self.segments

    def worst_case_s(self) -> float:
        """An upper bound of the time one record can take at this destination (every attempt
        timing out, every wait at its ceiling)."""
        return self.max_attempts * (self.timeout_s + self.backoff_cap_s)


@dataclass(frozen=True)
class WebhookConfig:
    """The validated destinations, in file order."""

    path: str
    destinations: tuple[Destination, ...]

    def for_segment(self, segment: str) -> list[Destination]:
        """The destinations of one segment's transitions, in file order."""
        return [d for d in self.destinations if d.wants(segment)]


DEFAULTS: dict[str, Any] = {
    "timeout": "5s",
    "max_attempts": 8,
    "backoff_base": "500ms",
    "backoff_cap": "60s",
}
_TOP_KEYS = {"defaults", "destinations"}
_DEST_KEYS = {"name", "url", "segments", "secret_env", *DEFAULTS}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def load_webhooks(path: str | Path, env: Mapping[str, str]) -> WebhookConfig:
    """Read and validate the YAML file at ``path``; secrets are looked up in ``env``."""
    import yaml

    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise WebhookConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WebhookConfigError(f"{name}: {where}not valid YAML: {problem}") from None
    return parse_webhooks(doc, name, env)


def parse_webhooks(doc: Any, name: str, env: Mapping[str, str]) -> WebhookConfig:
    """Validate a parsed document (see :func:`load_webhooks`)."""

    def fail(field: str, msg: str) -> WebhookConfigError:
        return WebhookConfigError(f"{name}: {field}: {msg}" if field else f"{name}: {msg}")

    if not isinstance(doc, dict):
        raise fail("", "expected a mapping with a 'destinations' list")
    unknown = sorted(set(map(str, doc)) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (expected one of {', '.join(sorted(_TOP_KEYS))})")
    defaults = dict(DEFAULTS)
    raw_defaults = doc.get("defaults") or {}
    if not isinstance(raw_defaults, dict):
        raise fail("defaults", "expected a mapping")
    for key, value in raw_defaults.items():
        if key not in DEFAULTS:
            raise fail(f"defaults.{key}", f"unknown key (expected one of {', '.join(DEFAULTS)})")
        defaults[key] = value
    raw = doc.get("destinations")
    if not isinstance(raw, list) or not raw:
        raise fail("destinations", "expected a non-empty list of destinations")
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(raw):
        dest = _destination(entry, f"destinations[{i}]", defaults, env, fail)
        if dest.name in seen:
            raise fail(f"destinations[{i}].name", f"duplicate destination name {dest.name!r}")
        seen.add(dest.name)
        out.append(dest)
    return WebhookConfig(name, tuple(out))


def _destination(
    entry: Any, where: str, defaults: dict[str, Any], env: Mapping[str, str], fail: Any
) -> Destination:
    if not isinstance(entry, dict):
        raise fail(where, "expected a mapping")
    for key in entry:
        if key not in _DEST_KEYS:
            raise fail(f"{where}.{key}", f"unknown key (expected one of "
                                         f"{', '.join(sorted(_DEST_KEYS))})")  # fmt: skip
    for key in ("name", "url", "segments", "secret_env"):
        if key not in entry:
            raise fail(f"{where}.{key}", "missing")
    name = entry["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"{where}.name", f"expected lower-case letters, digits, _ or -, got {name!r}")
    url = entry["url"]
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"{where}.url", f"expected an http:// or https:// URL with a host, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise fail(f"{where}.url", f"bad port in {url!r}") from None
    segments = _segments(entry["segments"], f"{where}.segments", fail)
    secret_env = entry["secret_env"]
    if not isinstance(secret_env, str) or not _ENV_NAME.match(secret_env):
        raise fail(f"{where}.secret_env", f"expected an environment variable name, got "
                                          f"{secret_env!r}")  # fmt: skip
    secret = env.get(secret_env, "")
    if not secret:
        raise fail(f"{where}.secret_env", f"missing secret: environment variable {secret_env} "
                                          "is unset or empty")  # fmt: skip
    merged = {**defaults, **{k: v for k, v in entry.items() if k in DEFAULTS}}
    timeout = _seconds(merged["timeout"], f"{where}.timeout", fail, positive=True)
    base = _seconds(merged["backoff_base"], f"{where}.backoff_base", fail, positive=False)
    cap = _seconds(merged["backoff_cap"], f"{where}.backoff_cap", fail, positive=False)
    if cap < base:
        raise fail(f"{where}.backoff_cap", f"must be at least backoff_base ({base:g}s)")
    attempts = merged["max_attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 1000:
        raise fail(f"{where}.max_attempts", f"expected an integer in [1, 1000], got {attempts!r}")
    return Destination(name, url, segments, secret, secret_env, timeout, attempts, base, cap)


def _segments(value: Any, where: str, fail: Any) -> frozenset[str] | None:
    if value == "*":
        return None
    if not isinstance(value, list) or not value:
        raise fail(where, f'expected "*" or a non-empty list of segment names, got {value!r}')
    for s in value:
        if not isinstance(s, str) or not _SEGMENT.match(s):
            raise fail(where, f"bad segment name {s!r}")
    return frozenset(value)


def _seconds(value: Any, where: str, fail: Any, positive: bool) -> float:
    """A duration: a number of seconds or text like ``500ms``, ``5s``, ``1m``."""
    if isinstance(value, bool):
        raise fail(where, f"expected a duration like 500ms or 5s, got {value!r}")
    try:
        ms = float(value) * 1000 if isinstance(value, int | float) else duration_ms(str(value))
    except ValueError:
        raise fail(where, f"expected a duration like 500ms or 5s, got {value!r}") from None
    if ms < 0 or ms > 86_400_000 or (positive and ms <= 0):
        raise fail(where, f"expected a duration in {'(' if positive else '['}0, 1d], got {value!r}")
    return ms / 1000

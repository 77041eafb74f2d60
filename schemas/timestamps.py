"""Event times: parsing and formatting ``ts`` and ``as_of`` (RFC 3339 with a zone, or epoch
milliseconds), within the accepted range."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

# Epoch-millisecond bounds accepted for ``ts``: 1970-01-01 .. 2100-01-01 (UTC); legacy systems'
# history reaches back before 2000.
MIN_TS_MS: Final = 0
MAX_TS_MS: Final = 4_102_444_800_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def parse_ts(value: int | str) -> int | None:
    """Epoch milliseconds from RFC 3339 (with a zone) or epoch milliseconds; ``None`` if bad.

    >>> parse_ts("2026-01-02T03:04:05.250+01:00")
    1767319445250
    >>> parse_ts(1767319445250)
    1767319445250
    >>> parse_ts("2026-01-02T03:04:05") is None   # no zone
    True
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        ms = value
    else:
        if len(value) > 40:
            return None
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None or dt.utcoffset() is None:
            return None
        ms = (dt - _EPOCH) // _MS
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        return None
    return ms


def format_ts(ms: int) -> str:
    """RFC 3339 UTC string for epoch milliseconds.

    >>> format_ts(1767323045250)
    '2026-01-02T03:04:05.250Z'
    >>> format_ts(1767323045000)
    '2026-01-02T03:04:05Z'
    """
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


_EPOCH_MS_RE: Final = re.compile(r"-?\d{1,16}")
# A "+hh:mm" zone whose "+" a query string decoded to a space.
_SPACE_ZONE_RE: Final = re.compile(r"(\d) (\d\d:?\d\d)$")


def parse_as_of(raw: str) -> int | None:
    """An ``as_of`` (HTTP query, CLI ``--as-of``): RFC 3339 with a zone, or epoch milliseconds,
    as epoch ms; ``None`` when it is neither. A ``+hh:mm`` zone whose ``+`` arrived as a space
    (an unencoded query string) is accepted. The one parser of every read's time.

    >>> parse_as_of("2026-01-02T03:04:05Z"), parse_as_of("1767323045000")
    (1767323045000, 1767323045000)
    >>> parse_as_of("2026-01-02T04:04:05 01:00"), parse_as_of("yesterday")
    (1767323045000, None)
    """
    value: int | str = (
        int(raw) if _EPOCH_MS_RE.fullmatch(raw) else _SPACE_ZONE_RE.sub(r"\1+\2", raw)
    )
    return parse_ts(value)

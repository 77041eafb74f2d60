"""Event-time windows kept as sparse buckets: the series, their granularities and their encoding.

A windowed feature (``page_views_1h``, ``revenue_30d``, ...) is read from one *series*: a sparse map
``bucket index -> value`` where the bucket of an event is ``ts // g`` for the series' granularity
``g``. Read as of ``t``, a window of width ``W`` sums the buckets ``k`` with
``(k + 1) * g - 1 > t - W`` and ``k * g <= t``: every bucket that overlaps ``(t - W, t]``. For
``t`` at or after the newest event this never undercounts and overcounts by at most one bucket:
``exact(W) <= value <= exact(W + g)`` where ``exact(W)`` counts the events with ts in
``(t - W, t]``.

In memory all the series of a profile share one ``dict[int, int]`` whose keys pack the series
index and the bucket index: ``key = series.base + k`` with ``base = idx << KEY_SHIFT`` (one dict to
copy and prune; sorted keys come grouped by series, then by bucket). In Redis each series is one
field (see :func:`encode_buckets`).

Which series exist (their names, windows, granularities and indexes) is derived from the feature
declarations in :mod:`features.registry`.

Examples
--------
>>> s = Series("pv1h", 0, window=HOUR, gran=150 * SECOND)
>>> buckets = {100: 2, 101: 1, 124: 5}
>>> window_sum(buckets, s, as_of=124 * 150_000)          # buckets 100..124 overlap the hour
8
>>> window_sum(buckets, s, as_of=125 * 150_000 - 2)
8
>>> window_sum(buckets, s, as_of=125 * 150_000 - 1)      # bucket 100 ends at t - W: out
6
>>> encode_buckets({100: 2, 101: 1, 124: 5}, origin=98)      # first bucket = origin + 2
'2:2,1,,,,,,,,,,,,,,,,,,,,,,,5'
>>> decode_buckets("2:2,1,,,,,,,,,,,,,,,,,,,,,,,5", origin=98) == {100: 2, 101: 1, 124: 5}
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR

#: The packed in-memory bucket key is ``(series index << KEY_SHIFT) + bucket index``.
KEY_SHIFT: Final = 32
KEY_MASK: Final = (1 << KEY_SHIFT) - 1


@dataclass(frozen=True, slots=True)
class Series:
    """One bucketed series: its Redis field ``name``, in-memory index, window and granularity (ms).

    >>> s = Series("rp90d", 14, window=90 * DAY, gran=3 * DAY)
    >>> s.base == 14 << KEY_SHIFT, s.window // DAY, s.gran // DAY
    (True, 90, 3)
    """

    name: str
    idx: int
    window: int
    gran: int

    @property
    def base(self) -> int:
        """The series' offset in packed bucket keys."""
        return self.idx << KEY_SHIFT

    def live_from(self, newest: int) -> int:
        """Smallest bucket index that can still count for some ``as_of >= newest``.

        >>> Series("pv1h", 0, HOUR, 150 * SECOND).live_from(124 * 150_000 + 3_599_999)
        124
        """
        return (newest - self.window + 1) // self.gran

    def bounds(self, as_of: int) -> tuple[int, int]:
        """The inclusive range of bucket indexes that count as of ``as_of``.

        >>> Series("pv1h", 0, HOUR, 150 * SECOND).bounds(124 * 150_000)
        (100, 124)
        """
        return (as_of - self.window + 1) // self.gran, as_of // self.gran


def window_sum(buckets: Mapping[int, int] | None, series: Series, as_of: int) -> int:
    """Sum of the buckets of one series (``bucket index -> value``) that count as of ``as_of``."""
    if not buckets:
        return 0
    lo, hi = series.bounds(as_of)
    return sum(v for k, v in buckets.items() if lo <= k <= hi)


_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


_SMALL: Final[list[str]] = [a + b for a in ("", *_DIGITS[1:]) for b in _DIGITS]


def to_base36(n: int) -> str:
    """Base-36 digits of a non-negative integer.

    >>> to_base36(0), to_base36(35), to_base36(36), int(to_base36(123456789), 36)
    ('0', 'z', '10', 123456789)
    """
    if n < 1296:
        return _SMALL[n]
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
    return "".join(reversed(out))


def encode_buckets(buckets: Mapping[int, int], origin: int = 0) -> str:
    """Compact text of one sparse series: ``<first - origin>:<v>,<v>,...``, numbers in base 36.

    Values run densely from the first non-zero bucket to the last; a zero is an empty string.
    Only non-negative values are stored (counts, and cents of one sign). ``origin`` is a bucket
    index both sides know (the profile stores ``Series.live_from(last_seen_ts)``), so the offset
    of the first bucket is small: usually one character.
    """
    if not buckets:
        return ""
    first = min(buckets)
    vals = [""] * (max(buckets) - first + 1)
    small = _SMALL
    for k, v in buckets.items():
        if v:
            vals[k - first] = small[v] if v < 1296 else to_base36(v)
    off = first - origin
    head = to_base36(off) if off >= 0 else "-" + to_base36(-off)
    return head + ":" + ",".join(vals)


def decode_buckets(text: str, origin: int = 0) -> dict[int, int]:
    """Inverse of :func:`encode_buckets` (zeros are not returned)."""
    if not text:
        return {}
    head, _, body = text.partition(":")
    first = origin + int(head, 36)
    return {first + i: int(v, 36) for i, v in enumerate(body.split(",")) if v}

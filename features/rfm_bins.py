"""The bins of the RFM population's histograms (:class:`features.rfm.RfmPopulation`): bin
edges, the bin of a value, the recency origin, and cut points from bin counts.

The population is kept as three fixed histograms, so memory is bounded (at most about 3,600
non-empty bins in all) whatever the number of customers:

* **frequency** (``purchases_total``): one bin per integer 0, 1, ..., 50, then bins about 5 %
  wide (integer edges 51, 54, 57, ...) up to 10**9; everything above shares one bin.
* **monetary** (``revenue_total``, net of refunds): one bin for everything below 0.01 (zero and
  net-negative revenue included), then bins 2 % wide (edges ``0.01 * 1.02**i``, rounded to 6
  significant digits) up to 10**10; everything above shares one bin.
* **recency** (``last_purchase_ts``, epoch ms, UTC): bins on the absolute purchase time, one per
  hour for the 30 days (720 hours) ending with the hour of the newest purchase seen, one per UTC
  day for the 1,096 days ending with that purchase's day, and one bin for everything older. As
  the newest purchase moves on, hourly bins that fall out of the 30 days are merged into their
  day and days out of the 1,096 days into the "older" bin (the histograms never need the raw
  values again). A population that empties returns to the initial state.

A histogram is a dict ``{bin key: count}`` holding non-empty bins only: for frequency and
monetary the key is the bin's index (:func:`bisect.bisect_right` of the value in the edges), for
recency the bin's lower edge in ms (:func:`r_key`), or :data:`R_OLDER`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
#: Recency: hourly bins for this many hours ending with the newest purchase's hour.
HOURLY_SPAN_HOURS: Final = 30 * 24
#: Recency: daily bins for this many days ending with the newest purchase's day; older: one bin.
DAILY_SPAN_DAYS: Final = 1096

QUINTILES: Final = (1, 2, 3, 4)
R_OLDER: Final = -(2**62)  # key of the recency bin "older than the daily span"


def _frequency_edges() -> tuple[int, ...]:
    edges = list(range(1, 52))  # bins [0,1) [1,2) ... [50,51): exact integers up to 50
    while edges[-1] < 10**9:
        edges.append(max(edges[-1] + 1, math.ceil(edges[-1] * 1.05)))
    return tuple(edges)


def _monetary_edges() -> tuple[float, ...]:
    edges: list[float] = []
    i = 0
    while not edges or edges[-1] < 1e10:
        edges.append(float(f"{0.01 * 1.02**i:.6g}"))
        i += 1
    return tuple(edges)


#: Lower edges of the frequency bins after the first (bin i holds [edges[i-1], edges[i])).
FREQUENCY_EDGES: Final = _frequency_edges()
#: Lower edges of the monetary bins after the first (the first holds everything below 0.01).
MONETARY_EDGES: Final = _monetary_edges()


def money(value: float) -> float:
    """A monetary value for the bins and scores (NaN counts as 0)."""
    return 0.0 if math.isnan(value) else value


def r_origins(newest_ts: int) -> tuple[int, int]:
    """(first hourly bin's hour, first daily bin's day) for the newest purchase time."""
    return newest_ts // HOUR_MS - HOURLY_SPAN_HOURS + 1, newest_ts // DAY_MS - DAILY_SPAN_DAYS + 1


def r_key(ts: int, hour0: int, day0: int) -> int:
    """The recency bin of ``ts`` (its lower edge in ms, or ``R_OLDER``)."""
    hour = ts // HOUR_MS
    if hour >= hour0:
        return hour * HOUR_MS
    day = ts // DAY_MS
    if day >= day0:
        return day * DAY_MS
    return R_OLDER


def add_count(counts: dict[int, int], key: int, delta: int) -> None:
    """Add ``delta`` to a bin's count, dropping the bin when it empties."""
    n = counts.get(key, 0) + delta
    if n < 0:
        raise ValueError("RfmPopulation.update: removing a point that is not in the population")
    if n:
        counts[key] = n
    else:
        del counts[key]


def keys_in(counts: dict[int, int], lo: int, hi: int, step: int) -> list[int]:
    """The keys of ``counts`` in ``range(lo, hi, step)``, by whichever loop is shorter."""
    if (hi - lo) // step <= len(counts):
        return [k for k in range(lo, hi, step) if k in counts]
    return sorted(k for k in counts if lo <= k < hi and k != R_OLDER)


def cuts(counts: dict[int, int], n: int, upper_edge: Callable[[int], float]) -> list[float]:
    """Upper edges of the bins where the cumulative count first reaches k * n / 5, k = 1..4."""
    out: list[float] = []
    cum = 0
    for key in sorted(counts):
        cum += counts[key]
        while len(out) < 4 and 5 * cum >= QUINTILES[len(out)] * n:
            out.append(upper_edge(key))
    return out


def static_upper(edges: Sequence[float]) -> Callable[[int], float]:
    # bin i = [edges[i-1], edges[i]); the open top bin (i == len(edges)) uses its lower edge
    return lambda i: edges[i] if i < len(edges) else edges[-1]

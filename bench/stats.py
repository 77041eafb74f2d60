"""Small statistics helpers (percentiles with linear interpolation, as numpy's default).

>>> percentile([1.0, 2.0, 3.0, 4.0], 50)
2.5
>>> percentile([5.0], 99)
5.0
>>> summary([3.0, 1.0, 2.0])
{'count': 3, 'min': 1.0, 'p50': 2.0, 'p90': 2.8, 'p99': 2.98, 'max': 3.0, 'mean': 2.0}
>>> summary([])
{'count': 0}
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated between ranks."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def summary(values: Sequence[float], ndigits: int = 2) -> dict[str, float | int]:
    """Count, min, p50, p90, p99, max and mean of ``values`` (only the count when empty)."""
    if not values:
        return {"count": 0}
    xs = sorted(values)
    return {
        "count": len(xs),
        "min": round(xs[0], ndigits),
        "p50": round(percentile(xs, 50), ndigits),
        "p90": round(percentile(xs, 90), ndigits),
        "p99": round(percentile(xs, 99), ndigits),
        "max": round(xs[-1], ndigits),
        "mean": round(sum(xs) / len(xs), ndigits),
    }

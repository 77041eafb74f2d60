"""Buy-till-you-die histories: one customer's ``(x, t_x, T)`` from its profile, and the
population's histories the dataflow fits :mod:`models.btyd` on, once per day of event time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from models.btyd import BgNbdParams, fit

DAY_MS: Final = 86_400_000
#: Fewer customers with a purchase than this, or fewer repeat buyers than ``MIN_REPEAT``: no fit.
MIN_CUSTOMERS: Final = 20
MIN_REPEAT: Final = 5


def history_of(
    purchases: int, first_ts: int | None, last_purchase_ts: int | None, as_of_ms: int
) -> tuple[float, float, float] | None:
    """``(x, t_x, T)`` in days of a profile as of a time, or ``None`` without a purchase.

    Times count from the customer's first event (their first purchase in a transaction log;
    earlier when they browsed before buying, an approximation the profile cannot avoid: it does
    not keep the first purchase's time). Repeat purchases on the first day count at half a day.

    >>> history_of(3, 0, 10 * DAY_MS, 30 * DAY_MS)
    (2.0, 10.0, 30.0)
    >>> history_of(1, 0, 0, 5 * DAY_MS), history_of(0, 0, None, 5 * DAY_MS)
    ((0.0, 0.0, 5.0), None)
    """
    if purchases < 1 or last_purchase_ts is None:
        return None
    origin = last_purchase_ts if first_ts is None else min(first_ts, last_purchase_ts)
    x = purchases - 1
    t_x = max((last_purchase_ts - origin) / DAY_MS, 0.5) if x > 0 else 0.0
    age = max((as_of_ms - origin) / DAY_MS, t_x, 0.5)
    return float(x), t_x, age


@dataclass(slots=True)
class Histories:
    """The population's purchase histories at day resolution: customers counted by (purchases,
    first day, last purchase day), updated as customers change; :meth:`fit_at` fits the model
    on them as of a day (every customer's age then).

    >>> h = Histories()
    >>> h.update(None, (1, 10, 10)); h.update((1, 10, 10), (2, 10, 15)); len(h), h.customers
    (1, 1)
    """

    counts: dict[tuple[int, int, int], int] = field(default_factory=dict)
    customers: int = 0

    def __len__(self) -> int:
        return len(self.counts)

    def update(self, old: tuple[int, int, int] | None, new: tuple[int, int, int] | None) -> None:
        """Move a customer from history ``old`` to ``new`` (``None``: absent)."""
        if old is not None:
            n = self.counts.get(old, 0)
            if n <= 1:
                self.counts.pop(old, None)
            else:
                self.counts[old] = n - 1
            self.customers -= 1 if n else 0
        if new is not None:
            self.counts[new] = self.counts.get(new, 0) + 1
            self.customers += 1

    def fit_at(self, day: int, init: BgNbdParams | None = None) -> BgNbdParams | None:
        """Maximum-likelihood parameters as of ``day`` (``None`` with too few customers)."""
        rows = [(k, n) for k, n in sorted(self.counts.items()) if k[0] >= 1 and k[1] <= day]
        if sum(n for _, n in rows) < MIN_CUSTOMERS:
            return None
        if sum(n for k, n in rows if k[0] >= 2) < MIN_REPEAT:
            return None
        xs, txs, ts, ws = [], [], [], []
        for (purchases, first, last), n in rows:
            x = purchases - 1
            t_x = max(last - first, 0.5) if x > 0 else 0.0
            xs.append(float(x))
            txs.append(t_x)
            ts.append(max(day - first + 0.5, t_x, 0.5))
            ws.append(float(n))
        return fit(xs, txs, ts, weights=ws, init=init)

"""The demo's shop, lived now: a simulated history that ends at the wall clock, then live sessions
in real time.

:class:`LiveShop` runs the simulator (:mod:`nextbest.simulator`) over ``days`` days that end at the
moment it is made, then keeps the shop open: every call to :meth:`LiveShop.due` starts new
sessions at the current wall time (about ``rate`` events per second once they are under way:
registered customers drawn by their visit rate, and new anonymous visitors) and returns the events
whose time has come. A session's events are spread over seconds to minutes as in the history, so
a cart is filled, bought or left while one watches, and the stream's event time follows the wall
clock (so timers in event time fire in real time: an abandoned cart enters ``cart_abandoned``
30 minutes, plus the allowed lateness, after its last event).

The history is deterministic for a seed and a start; the live part depends on the wall clock by
design (it is the demo, not a test fixture).

>>> shop = LiveShop(SimConfig(customers=50, days=3, seed=1), rate=100.0, now_ms=lambda: 10**12)
>>> history = list(shop.history())
>>> all(orjson.loads(b)["ts"] < "2001-09-09T01:46:40Z" for b in history if b.startswith(b"{"))
True
>>> shop.now_ms = lambda: 10**12 + 1_000  # the shop opens a second after the history
>>> live = shop.due()
>>> len(live) > 0 and all(orjson.loads(b)["event_id"].startswith("e-1-L") for b in live)
True
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import accumulate
from typing import Final

import orjson

from nextbest.simulator import DAY_MS, SimConfig, _bad_line, _Ev, _Person, _Sim, event_doc
from schemas.events import format_ts

#: Share of live sessions started by a new anonymous visitor (the rest: registered customers).
NEW_VISITOR_SHARE: Final = 0.25
#: Share of new visitors who sign up in their session (and come back as customers).
SIGNUP_SHARE: Final = 0.1
#: How long the shop has seemingly been live when it opens (sessions under way).
_WARM_MS: Final = 5 * 60_000
#: Events per session assumed until the shop has measured its own.
_START_EVENTS_PER_SESSION: Final = 7.0


def wall_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


class LiveShop:
    """A simulated shop whose history ends now and which then stays open (see the module)."""

    def __init__(self, cfg: SimConfig, rate: float, now_ms: Callable[[], int] = wall_ms) -> None:
        self.now_ms = now_ms
        self.end_ms = now_ms()
        self.cfg = replace(cfg, start=format_ts(self.end_ms - cfg.days * DAY_MS), holdout_days=0)
        self.rate = rate
        self._sim = _Sim(self.cfg)
        self._pending: list[_Ev] = []  # events at or after end_ms, and live ones not due yet
        self._n = 0  # event ids written
        self._live_n = 0
        self._sessions = 0
        self._started = 0.0  # live events produced by the sessions started so far
        self._last: int | None = None  # wall time of the last live call
        self._rng = random.Random(f"nextbest-live-{cfg.seed}")
        #: the customers whose live sessions started last (the demo asks for their decisions)
        self.recent: deque[str] = deque(maxlen=20)
        self._members: list[_Person] = []
        self._member_cum: list[float] = []

    # -- history --------------------------------------------------------------------------------

    def history(self) -> Iterator[bytes]:
        """The simulated history: every event before the moment the shop was made, in ts order."""
        sim, end, seed = self._sim, self.end_ms, self.cfg.seed
        bad_rate, bad_rng, n_bad = self.cfg.bad_rate, random.Random(f"nextbest-bad-{seed}"), 0
        for day in range(self.cfg.days):
            for ev in sim.day_events(day):
                if ev[0] < end:
                    self._n += 1
                    d = event_doc(ev, f"e-{seed}-{self._n}")
                    line = orjson.dumps(d)
                    while bad_rate and bad_rng.random() < bad_rate:  # as the simulator does
                        n_bad += 1
                        yield _bad_line(bad_rng, d, line, ev[0], n_bad)
                    yield line
                else:
                    heapq.heappush(self._pending, ev)
        while sim.future:  # spilled past the last day (refunds, late sessions)
            heapq.heappush(self._pending, heapq.heappop(sim.future))
        self._open()

    def _open(self) -> None:
        """Who can come back live: registered customers who have not churned, by visit rate."""
        days = self.cfg.days
        self._members = [
            p
            for p in self._sim.people
            if p.cid is not None
            and (p.signup_day is None or p.signup_day < days)
            and p.churn_day > days
        ]
        self._member_cum = list(accumulate(p.rate for p in self._members))

    # -- live -----------------------------------------------------------------------------------

    def due(self) -> list[bytes]:
        """Start the sessions due since the last call and return the live events now due."""
        now = self.now_ms()
        if self._last is None:
            # Open as if the shop had been live for a while: sessions already under way (their
            # events before the end of the history are not sent), so the rate is reached at once.
            self._last = self.end_ms - _WARM_MS
            if not self._member_cum:
                self._open()
        last, self._last = self._last, now
        elapsed = max(0, now - last) / 1000
        per_session = (
            self._started / self._sessions if self._sessions >= 20 else _START_EVENTS_PER_SESSION
        )
        for _ in range(_poisson(self._rng, elapsed * self.rate / per_session)):
            # spread over the time since the last call: still after every event returned so far
            self._start_session(last + 1 + int(self._rng.random() * max(0, now - last - 1)))
        out: list[bytes] = []
        pending = self._pending
        while pending and pending[0][0] <= now:
            ev = heapq.heappop(pending)
            self._live_n += 1
            out.append(orjson.dumps(event_doc(ev, f"e-{self.cfg.seed}-L{self._live_n}")))
        return out

    def _start_session(self, start: int) -> None:
        sim, r = self._sim, self._rng.random
        day = (start - self.cfg.start_ms) // DAY_MS
        events: list[_Ev] = []
        if r() < NEW_VISITOR_SHARE or not self._members:
            p = _Person(len(sim.people))
            p.devices.append(sim._device())
            like = sim.people[int(r() * len(sim.people))] if sim.people else None
            if like is not None:
                p.pref_cats, p.pref_cum = like.pref_cats, like.pref_cum
            else:
                p.pref_cats, p.pref_cum = [sim.cat.category(r())], [1.0]
            sim.people.append(p)
            kind = "anon"
            if self._members and r() < SIGNUP_SHARE:  # signs up: a new customer from now on
                kind = "signup"
                p.cid = f"c-{p.idx:07d}"
                twin = self._members[int(r() * len(self._members))]  # behaves like a customer
                p.segment, p.rate, p.conversion, p.hazard = (
                    twin.segment, twin.rate, twin.conversion, twin.hazard)  # fmt: skip
                self._members.append(p)
                self._member_cum.append(self._member_cum[-1] + p.rate)
            sim._session(p, day, events, kind, start=start)
        else:
            cum = self._member_cum
            p = self._members[bisect_right(cum, r() * cum[-1])]
            sim._session(p, day, events, "member", start=start)
        self._sessions += 1
        self._started += len(events)
        if p.cid is not None:
            self.recent.append(p.cid)
        for ev in events:
            if ev[0] >= self.end_ms:
                heapq.heappush(self._pending, ev)


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (by inversion for small means, normal approximation for large ones).

    >>> rng = random.Random(3)
    >>> draws = [_poisson(rng, 4.0) for _ in range(20_000)]
    >>> 3.9 < sum(draws) / len(draws) < 4.1
    True
    >>> _poisson(rng, 0.0)
    0
    """
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k

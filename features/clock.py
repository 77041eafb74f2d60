"""An event-time clock: a watermark that follows the stream, and timers that fire on it.

Things that happen by time passing — a profile expiring after months without events, a label
maturing when its horizon has passed, a segment entered by "no visit for 30 days" — must follow
event time, not the wall clock, so that replaying a year in minutes gives what living through it
gave. :class:`EventClock` is that mechanism, kept pure so the dataflow can snapshot it:

* the **watermark** is the newest event time observed minus the allowed lateness; it never moves
  back. Events older than it are late by definition.
* a **timer** is ``(key, kind) -> deadline``; registering the same ``(key, kind)`` again keeps the
  later deadline (so "expire 400 days after the last event" is one timer per key that moves on).
  When the watermark reaches a deadline the timer fires once, as ``(key, kind, deadline)``.

Examples
--------
>>> c = EventClock(lateness_ms=10)
>>> c.set_timer("c:1", "retention", 100)
>>> c.set_timer("c:2", "retention", 150)
>>> c.set_timer("c:1", "retention", 120)     # moved on: the later deadline wins
>>> c.advance(115)                            # watermark 105: nothing due yet
[]
>>> c.advance(140), c.watermark
([('c:1', 'retention', 120)], 130)
>>> c.advance(100)                            # the watermark never moves back
[]
>>> c.advance(1000)
[('c:2', 'retention', 150)]
"""

from __future__ import annotations

import heapq
from typing import Final

#: Watermark before any event was observed.
NO_WATERMARK: Final = -(2**62)


class EventClock:
    """Watermark plus timers; pickles (it lives in Bytewax recovery snapshots)."""

    __slots__ = ("_deadlines", "_heap", "lateness_ms", "watermark")

    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.watermark = NO_WATERMARK
        self._deadlines: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, str, str]] = []

    def __getstate__(self) -> tuple[int, int, dict[tuple[str, str], int]]:
        return (self.lateness_ms, self.watermark, self._deadlines)

    def __setstate__(self, st: tuple[int, int, dict[tuple[str, str], int]]) -> None:
        self.lateness_ms, self.watermark, self._deadlines = st
        self._heap = [(d, k, kind) for (k, kind), d in self._deadlines.items()]
        heapq.heapify(self._heap)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventClock) and self.__getstate__() == other.__getstate__()

    def __len__(self) -> int:
        """Number of pending timers."""
        return len(self._deadlines)

    def set_timer(self, key: str, kind: str, deadline: int) -> None:
        """Fire ``(key, kind)`` when the watermark reaches ``deadline`` (the later one wins).

        A timer has at most one heap entry: moving a deadline later only updates the map; the
        entry, when it comes up at the old deadline, is pushed again at the current one. So the
        heap holds at most one entry per timer (plus cancelled ones until they come up).

        >>> c = EventClock(0)
        >>> for d in range(100, 200):
        ...     c.set_timer("k", "retention", d)
        >>> len(c._heap), c.advance(150), c.advance(199)
        (1, [], [('k', 'retention', 199)])
        """
        key_kind = (key, kind)
        current = self._deadlines.get(key_kind)
        if current is not None and current >= deadline:
            return
        self._deadlines[key_kind] = deadline
        if current is None:
            heapq.heappush(self._heap, (deadline, key, kind))

    def cancel(self, key: str, kind: str) -> None:
        """Forget a timer (its heap entry is dropped lazily)."""
        self._deadlines.pop((key, kind), None)

    def forget(self, key: str) -> None:
        """Drop every timer of ``key`` (an erasure: nothing of the key stays, heap included).

        >>> c = EventClock(0); c.set_timer("k", "x", 5); c.set_timer("j", "x", 6); c.forget("k")
        >>> c.keys(), c._heap
        ({'j'}, [(6, 'j', 'x')])
        """
        for key_kind in [kk for kk in self._deadlines if kk[0] == key]:
            del self._deadlines[key_kind]
        self._heap = [e for e in self._heap if e[1] != key]
        heapq.heapify(self._heap)

    def deadline(self, key: str, kind: str) -> int | None:
        """The pending deadline of ``(key, kind)``, ``None`` if there is none.

        >>> c = EventClock(0); c.set_timer("k", "x", 5); c.deadline("k", "x"), c.deadline("k", "y")
        (5, None)
        """
        return self._deadlines.get((key, kind))

    def keys(self) -> set[str]:
        """The keys with a pending timer.

        >>> c = EventClock(0); c.set_timer("k", "x", 5); c.set_timer("k", "y", 6); c.keys()
        {'k'}
        """
        return {key for key, _kind in self._deadlines}

    def advance(self, newest_ts: int) -> list[tuple[str, str, int]]:
        """Observe an event time; return the timers that became due, in deadline order."""
        wm = newest_ts - self.lateness_ms
        if wm <= self.watermark:
            return []
        self.watermark = wm
        return self.due()

    def due(self) -> list[tuple[str, str, int]]:
        """Pop the timers due at the current watermark (e.g. set at or below it after an advance).

        >>> c = EventClock(0); _ = c.advance(10); c.set_timer("k", "x", 7); c.due(), c.due()
        ([('k', 'x', 7)], [])
        """
        wm = self.watermark
        due: list[tuple[str, str, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= wm:
            deadline, key, kind = heapq.heappop(heap)
            current = self._deadlines.get((key, kind))
            if current == deadline:
                del self._deadlines[(key, kind)]
                due.append((key, kind, deadline))
            elif current is not None:  # moved later: its one entry goes to the new place
                heapq.heappush(heap, (current, key, kind))
        return due

"""Stream time: each event learns the watermark of its source partition when it arrived.

The watermark at an event is the newest event time of the *earlier* records of its partition
(a file, a Kafka partition) minus the allowed lateness: a function of the arrival order alone,
not of batching or of when the clocks' ticks come. The profile step realises segment flips up
to it before applying the event (:mod:`dataflows.steps.segments`), so an event that is late for
the stream but not for its profile finds the same memberships however the stream was cut. One
keyed state per partition (its newest event time), in the recovery snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows.records import NO_STREAM_TIME, In, position_key
from dataflows.steps import RETAIN


def partition_of(item: In) -> str:
    """The key of an event's source partition (its position without the line or offset).

    >>> from schemas import Event
    >>> from dataflows.records import RawRecord
    >>> ev = Event(event_id="e", type="page_view", ts=0, customer_id="c")
    >>> partition_of(In(ev, RawRecord(b"", "kafka:clicks:3:17")))
    'kafka:clicks:3'
    """
    return position_key(item.record.position)[0]


class StreamTimeLogic(StatefulBatchLogic[In, In, int]):
    """One source partition: stamps each event with the partition's watermark before it.

    >>> from schemas import Event
    >>> from dataflows.records import RawRecord
    >>> def ev(ts):
    ...     return In(Event(event_id=str(ts), type="page_view", ts=ts, customer_id="c"),
    ...               RawRecord(b"", "file:f:1"))
    >>> logic = StreamTimeLogic(None, lateness_ms=10)
    >>> out, _ = logic.on_batch([ev(100), ev(50), ev(200)])
    >>> [i.stream_wm for i in out][1:], logic.snapshot()
    ([90, 90], 200)
    """

    def __init__(self, resume: int | None, lateness_ms: int) -> None:
        self.newest = NO_STREAM_TIME if resume is None else resume
        self.lateness = lateness_ms

    def on_batch(self, values: list[In]) -> tuple[Iterable[In], bool]:
        out: list[In] = []
        newest = self.newest
        lateness = self.lateness
        for item in values:
            wm = newest - lateness if newest > NO_STREAM_TIME else NO_STREAM_TIME
            out.append(In(item.event, item.record, wm))
            if item.event.ts > newest:
                newest = item.event.ts
        self.newest = newest
        return out, RETAIN

    def snapshot(self) -> Any:
        return self.newest

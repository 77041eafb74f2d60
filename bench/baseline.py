"""(a) The baseline: a minimal Bytewax flow that reads, decodes and counts per key, in-process.

It reads the file with the same source as the full flow
(:class:`dataflows.sources.JsonlFilesSource`) and decodes with the same decoder, so the ratio
full/baseline measures what the profile flow adds (profile state, Redis writes, dead letters,
metrics) over the bare cost of a keyed Bytewax flow.

    read -> decode (drop rejects) -> key_on(Event.key) -> stateful_map(count) -> discard
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.records import RawRecord
from dataflows.sources import JsonlFilesSource
from schemas.events import Event, decode_event


class _DiscardPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class DiscardSink(DynamicSink[Any]):
    """A sink that does nothing with what it gets."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DiscardPartition:
        return _DiscardPartition()


@dataclass
class BaselineCounts:
    """What the baseline flow saw."""

    read: int = 0
    accepted: int = 0
    keys: int = 0


def build_baseline_flow(path: Path, counts: BaselineCounts, batch_size: int = 1000) -> Dataflow:
    """The baseline flow over one JSONL file; ``counts`` is filled while it runs."""

    def decode_batch(batch: list[RawRecord]) -> list[Event]:
        counts.read += len(batch)
        out = [ev for ev in (decode_event(r.data) for r in batch) if isinstance(ev, Event)]
        counts.accepted += len(out)
        return out

    def count(state: int | None, event: Event) -> tuple[int, int]:
        if state is None:
            counts.keys += 1
            state = 0
        state += 1
        return state, state

    flow = Dataflow("bench-baseline")
    raw = op.input("read", flow, JsonlFilesSource([path], batch_size))
    events = op.flat_map_batch("decode", raw, decode_batch)
    keyed = op.key_on("key", events, event_key)
    counted = op.stateful_map("count", keyed, count)
    op.output("discard", counted, DiscardSink())
    return flow


def event_key(event: Event) -> str:
    """The partition key (``c:<customer_id>``, else ``a:<anonymous_id>``)."""
    return event.key


def run_baseline(path: Path, batch_size: int = 1000) -> dict[str, Any]:
    """Run the baseline flow over ``path`` in this process; events/s over all lines read."""
    from bytewax.testing import run_main

    counts = BaselineCounts()
    flow = build_baseline_flow(path, counts, batch_size)
    t0 = time.perf_counter()
    run_main(flow)  # type: ignore[no-untyped-call]
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 3),
        "events_per_s": round(counts.read / seconds, 1) if seconds > 0 else 0.0,
        "read": counts.read,
        "accepted": counts.accepted,
        "keys": counts.keys,
        "batch_size": batch_size,
    }

"""The profile dataflow: decode -> dead-letter branch -> key by customer -> profile -> Redis.

Step ids are stable names: Bytewax recovery state is keyed by them.

    read -> decode -> split_rejected -+-> (rejected) -> dead_letter
                                      +-> (events)   -> key_by_customer -> profile -> write_profiles
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from dataflows import metrics
from dataflows.records import RawRecord, Rejected, decode_record
from features.profile import ProfileState, apply
from schemas.events import Event


@dataclass
class FlowStats:
    """Counts of one run, for the CLI summary (the same numbers go to Prometheus)."""

    read: int = 0
    accepted: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    customers: int = 0
    visitors: int = 0

    def as_dict(self, seconds: float) -> dict[str, Any]:
        """The ``replay --json`` summary."""
        dead = sum(self.dead_lettered.values())
        return {
            "read": self.read,
            "accepted": self.accepted,
            "dead_lettered": dead,
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "customers": self.customers,
            "visitors": self.visitors,
            "seconds": round(seconds, 3),
            "events_per_s": round(self.read / seconds, 1) if seconds > 0 else 0.0,
        }


def make_decoder(stats: FlowStats, source_label: str) -> Callable[[list[RawRecord]], list[Any]]:
    """Batch decoder that counts what it sees (one call per source batch)."""
    read_counter = metrics.EVENTS_READ.labels(source_label)

    def decode_batch(batch: list[RawRecord]) -> list[Event | Rejected]:
        out = [decode_record(r) for r in batch]
        stats.read += len(batch)
        read_counter.inc(len(batch))
        for item in out:
            if isinstance(item, Rejected):
                reason = item.error.reason
                stats.dead_lettered[reason] += 1
                metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
            else:
                metrics.EVENTS_ACCEPTED.labels(item.type).inc()
        stats.accepted += sum(1 for item in out if not isinstance(item, Rejected))
        return out

    return decode_batch


def make_profile_mapper(
    stats: FlowStats,
) -> Callable[[ProfileState | None, Event], tuple[ProfileState, ProfileState]]:
    """The per-key state update (pure :func:`features.profile.apply`) plus a new-key count."""

    def update(state: ProfileState | None, event: Event) -> tuple[ProfileState, ProfileState]:
        if state is None:
            if event.customer_id is not None:
                stats.customers += 1
            else:
                stats.visitors += 1
        state = apply(state, event)
        return state, state

    return update


def is_event(item: Event | Rejected) -> bool:
    """Branch predicate: accepted events go on, rejects go to the dead-letter output."""
    return not isinstance(item, Rejected)


def event_key(event: Event) -> str:
    """Partition key: the customer id, else the anonymous id of anonymous-only events."""
    return event.key


def build_flow(
    source: Source[Any],
    profile_sink: Sink[tuple[str, ProfileState]],
    dead_letter_sink: Sink[Rejected],
    stats: FlowStats | None = None,
    to_record: Callable[[Any], RawRecord] | None = None,
    source_label: str = "file",
) -> Dataflow:
    """Build the profile dataflow over any source of :class:`RawRecord` (or ``to_record`` input)."""
    stats = FlowStats() if stats is None else stats
    flow = Dataflow("nextbest-profiles")
    raw = op.input("read", flow, source)
    if to_record is not None:
        raw = op.map("to_record", raw, to_record)
    decoded = op.flat_map_batch("decode", raw, make_decoder(stats, source_label))
    split = op.branch("split_rejected", decoded, is_event)
    op.output("dead_letter", split.falses, dead_letter_sink)
    keyed = op.key_on("key_by_customer", split.trues, event_key)
    profiles = op.stateful_map("profile", keyed, make_profile_mapper(stats))
    op.output("write_profiles", profiles, profile_sink)
    return flow

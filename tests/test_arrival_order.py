"""A fixed arrival sequence gives the same result however the stream is cut into batches.

(Redis projections, dead letters and segment transitions.)

Lateness, duplicates, identity hand-overs and everything else are decided in arrival order (the
source's order: file line, partition offset), never by sorting a batch by event time. The
property runs the whole flow (real Redis) over random arrival sequences — several customers and
devices, logins that link them, purchases, duplicates, events late by less and by more than the
allowed lateness — once one record per batch and once in random batches, and compares every
Redis key and value and the dead letters.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.flow import build_flow
from dataflows.records import RawRecord, Rejected, SegmentEvent
from dataflows.sinks import RedisSink
from dataflows.steps.segments import SegmentContext
from features.segments import parse_segments
from tests.conftest import flow_config
from tests.test_golden import digests

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000
MIN = 60_000
LATENESS = 10 * MIN


class _Batches(StatefulSourcePartition[RawRecord, int]):
    def __init__(self, batches: list[list[RawRecord]], at: int) -> None:
        self.batches, self.at = batches, at

    def next_batch(self) -> list[RawRecord]:
        if self.at >= len(self.batches):
            raise StopIteration
        self.at += 1
        return self.batches[self.at - 1]

    def snapshot(self) -> int:
        return self.at


class BatchesSource(FixedPartitionedSource[RawRecord, int]):
    """One partition that yields exactly these batches."""

    def __init__(self, batches: list[list[RawRecord]]) -> None:
        self.batches = batches

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, step_id: str, for_part: str, resume: int | None) -> _Batches:
        return _Batches(self.batches, resume or 0)


#: Segments over what these histories change: carts, views, purchases, recency, windows.
SEGMENTS = SegmentContext(
    parse_segments(
        """
segments:
  - name: cart_abandoned
    description: cart left 30 minutes
    entry: {feature: cart_abandoned, op: eq, value: true}
    exit: {feature: cart_items, op: eq, value: 0}
  - name: busy
    description: 3 page views in an hour, after 20 minutes of it
    entry: {feature: page_views_1h, op: ge, value: 3}
    min_duration: 20m
  - name: quiet
    description: no event for 2 hours
    entry: {feature: days_since_last_seen, op: ge, value: 0.0833}
  - name: buyer_then_quiet
    description: bought, and quiet
    entry: {all: [{feature: purchases_total, op: ge, value: 1}, {segment: quiet}]}
""",
        "test.yaml",
    )
)

CUSTOMERS = ["c1", "c2", "c3"]
DEVICES = ["d1", "d2"]


@st.composite
def arrivals(draw: st.DrawFn) -> list[bytes]:
    """Events in arrival order: time mostly moves on, some arrive late (within and beyond the
    lateness), some twice."""
    n = draw(st.integers(5, 45))
    t = T0
    out: list[bytes] = []
    sent: list[bytes] = []
    for i in range(n):
        t += draw(st.sampled_from([0, 1, 5, 20, 90])) * MIN
        back = draw(st.sampled_from([0, 0, 0, 3, 8, 15, 180])) * MIN  # late by this much
        kind = draw(st.sampled_from(["view", "view", "cart", "buy", "anon", "login"]))
        cid, dev = draw(st.sampled_from(CUSTOMERS)), draw(st.sampled_from(DEVICES))
        ev: dict[str, Any] = {"event_id": f"e{i}", "ts": t - back}
        if kind == "view":
            ev |= {"type": "page_view", "customer_id": cid, "session_id": f"s{i // 6}"}
        elif kind == "cart":
            ev |= {"type": "add_to_cart", "customer_id": cid, "product_id": "p", "price": 3.5,
                   "quantity": 1, "category": draw(st.sampled_from(["toys", "books"]))}  # fmt: skip
        elif kind == "buy":
            ev |= {"type": "purchase", "customer_id": cid, "total": 12.0}
        elif kind == "anon":
            ev |= {"type": "product_view", "anonymous_id": dev, "product_id": "p",
                   "category": "toys"}  # fmt: skip
        else:
            ev |= {"type": "login", "customer_id": cid, "anonymous_id": dev}
        line = orjson.dumps(ev)
        out.append(line)
        sent.append(line)
        if draw(st.integers(0, 9)) == 0:  # a duplicate, now or a little later
            out.append(draw(st.sampled_from(sent)))
    return out


def _run(lines: list[bytes], cuts: list[int], url: str) -> dict[str, Any]:
    records = [RawRecord(line, f"file:h.jsonl:{i + 1}") for i, line in enumerate(lines)]
    batches: list[list[RawRecord]] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(records)]:
        if start < cut <= len(records):
            batches.append(records[start:cut])
            start = cut
    client = redis.Redis.from_url(url)
    client.flushdb()
    dead: list[Rejected] = []
    transitions: list[SegmentEvent] = []
    cfg = flow_config(lateness_ms=LATENESS, checkpoint_interval_ms=10**12, segments=SEGMENTS)
    run_main(build_flow(BatchesSource(batches), RedisSink(url), TestingSink(dead), config=cfg,
                        segment_sink=TestingSink(transitions)))  # fmt: skip
    got = digests(client, _dead_file(dead))
    got["dead"] = sorted((r.error.reason, r.record.position) for r in dead)
    per_customer: dict[str, list[tuple[str, str, str, int]]] = {}
    for t in transitions:  # in order per customer
        per_customer.setdefault(t.customer_id, []).append(
            (t.transition_id, t.segment, t.direction, t.at)
        )
    got["transitions"] = per_customer
    client.flushdb()
    return got


def _dead_file(dead: list[Rejected]) -> Any:
    class _Empty:  # digests() reads dead letters from a file; they are compared directly here
        parent = ""

        def read_bytes(self) -> bytes:
            return b""

    return _Empty()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=arrivals(), cuts=st.lists(st.integers(1, 60), max_size=12))
def test_the_result_does_not_depend_on_the_batching(
    redis_url: str, lines: list[bytes], cuts: list[int]
) -> None:
    url = f"{redis_url}?db=9"
    one_by_one = _run(lines, list(range(1, len(lines))), url)
    batched = _run(lines, cuts, url)
    assert batched == one_by_one

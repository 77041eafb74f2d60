"""Segments in the dataflow: timer-driven transitions for customers who send nothing more,
memberships in Redis, and a bad definitions file stopping the command with the field named."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.flow import build_flow
from dataflows.records import RawRecord, SegmentEvent
from dataflows.sinks import RedisSink
from dataflows.steps.segments import SegmentContext
from features.segments import parse_segments
from features.store import members_key, segments_key
from tests.conftest import flow_config, nextbest_cli

T0 = 1_767_225_600_000
DAY = 86_400_000
MIN = 60_000

SEGMENTS = SegmentContext(
    parse_segments(
        """
segments:
  - name: lapsed_30d
    description: no event for 30 days
    entry: {feature: days_since_last_seen, op: ge, value: 30}
  - name: cart_abandoned
    description: cart left 30 minutes
    entry: {feature: cart_abandoned, op: eq, value: true}
    exit: {feature: cart_items, op: eq, value: 0}
""",
        "test.yaml",
    )
)


def _rec(n: int, **ev: object) -> RawRecord:
    return RawRecord(orjson.dumps({"event_id": f"e{n}", **ev}), f"t:{n}")


def test_customers_who_send_nothing_more_move_by_the_clock(redis_url: str) -> None:
    """``gone`` leaves a cart and never returns: it enters ``cart_abandoned`` 30 minutes after
    its last event and ``lapsed_30d`` when event time passes 30 days (the exact rounded time),
    while the rest of the shop goes on — delivered by ticks during the stream: the input then
    aborts (no end-of-input ticks)."""
    records = [
        _rec(0, type="page_view", ts=T0, customer_id="gone"),
        _rec(1, type="add_to_cart", ts=T0 + MIN, customer_id="gone", price=5.0, quantity=1),
    ]
    records += [
        _rec(n, type="page_view", ts=T0 + n * 6 * 3_600_000, customer_id="busy")
        for n in range(2, 2 + 4 * 35)
    ]
    url = f"{redis_url}?db=7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    out: list[SegmentEvent] = []
    cfg = flow_config(segments=SEGMENTS)
    source = TestingSource([*records, TestingSource.ABORT()], batch_size=4)
    run_main(build_flow(source, RedisSink(url), TestingSink([]), config=cfg,
                        segment_sink=TestingSink(out)))  # fmt: skip
    gone = [(t.segment, t.direction, t.at) for t in out if t.customer_id == "gone"]
    assert gone == [
        ("cart_abandoned", "entered", T0 + MIN + 30 * MIN),
        ("lapsed_30d", "entered", T0 + MIN + 30 * DAY - 43_200),  # rounds to 30.000 days
    ]
    assert {t.customer_id for t in out} == {"gone"}  # busy never waits 30 min between events
    members = client.hgetall(segments_key("c:gone"))
    assert set(members) == {b"cart_abandoned", b"lapsed_30d"}
    assert client.zscore(members_key("lapsed_30d"), "gone") == T0 + MIN + 30 * DAY - 43_200
    client.flushdb()


def test_a_bad_segments_file_stops_the_command_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "segments.yaml"
    bad.write_text(
        "segments:\n"
        "  - name: broken\n"
        "    description: x\n"
        "    entry: {feature: cart_abandoned, op: gt, value: 3}\n"
    )
    data = tmp_path / "h.jsonl"
    data.write_bytes(b"")
    env = {"NEXTBEST_HOME": str(tmp_path / "home"), "NEXTBEST_SEGMENTS": str(bad),
           "NEXTBEST_METRICS_PORT": "0"}  # fmt: skip
    got = nextbest_cli("replay", str(data), env=env, check=False)
    assert got.returncode == 2
    assert str(bad) in got.stderr and "broken" in got.stderr and "entry.op" in got.stderr

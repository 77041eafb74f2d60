"""Profile state (pure) and the dataflow wiring, with bytewax.testing and a real Redis."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given
from hypothesis import strategies as st

from dataflows.profiles import FlowStats, build_flow
from dataflows.records import RawRecord, Rejected
from dataflows.sinks import DeadLetterFileSink, RedisProfileSink
from dataflows.sources import JsonlFilesSource
from features.profile import ProfileState, apply, from_fields, render, to_fields
from features.store import customer_key, read_profile
from schemas import Event

T0 = 1_772_359_200_000  # 2026-03-01T10:00:00Z

_events = st.lists(
    st.builds(
        lambda i, t, c, dt, total: Event(
            event_id=f"e{i}", type=t, ts=T0 + dt, customer_id=f"c{c}", total=total
        ),
        st.integers(0, 10**6),
        st.sampled_from(["page_view", "product_view", "add_to_cart", "purchase", "refund"]),
        st.integers(0, 3),
        st.integers(0, 10**9),
        st.floats(0, 1000).map(lambda x: round(x, 2)),
    ),
    max_size=40,
)


@given(_events, st.randoms())
def test_apply_matches_brute_force_in_any_order(events: list[Event], rnd: Any) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    states: dict[str, ProfileState] = {}
    for ev in shuffled:
        states[ev.key] = apply(states.get(ev.key), ev)
    for key, st_ in states.items():
        mine = [e for e in events if e.key == key]
        assert st_.counts == dict(Counter(e.type for e in mine))
        assert st_.events_total == len(mine)
        assert st_.first_seen_ts == min(e.ts for e in mine)
        assert st_.last_seen_ts == max(e.ts for e in mine)
        assert st_.purchases_total == sum(e.type == "purchase" for e in mine)
        expected = sum(
            (e.total or 0) * (1 if e.type == "purchase" else -1)
            for e in mine
            if e.type in ("purchase", "refund")
        )
        assert abs(st_.revenue_total - expected) < 0.05
        # Every state class pickles and round-trips; the Redis projection round-trips too.
        assert pickle.loads(pickle.dumps(st_)) == st_
        assert from_fields(to_fields(st_)) == st_


def _line(i: int, cust: str, type_: str = "page_view", **kw: Any) -> bytes:
    return orjson.dumps(
        {"event_id": f"e{i}", "type": type_, "ts": T0 + i * 1000, "customer_id": cust, **kw}
    )


def test_flow_routes_rejects_and_keys_by_customer() -> None:
    records = [
        RawRecord(_line(1, "c1"), "t:1"),
        RawRecord(b"{broken", "t:2"),
        RawRecord(_line(3, "c1", "purchase", total=10.0), "t:3"),
        RawRecord(
            orjson.dumps({"event_id": "e4", "type": "page_view", "ts": T0, "anonymous_id": "a9"}),
            "t:4",
        ),
        RawRecord(orjson.dumps({"event_id": "e5", "type": "page_view", "ts": T0}), "t:5"),
    ]
    profiles: list[tuple[str, ProfileState]] = []
    dead: list[Rejected] = []
    stats = FlowStats()
    run_main(build_flow(TestingSource(records), TestingSink(profiles), TestingSink(dead), stats))
    assert [r.error.reason for r in dead] == ["invalid_json", "no_identity"]
    assert [r.record.position for r in dead] == ["t:2", "t:5"]
    latest = dict(profiles)
    assert set(latest) == {"c:c1", "a:a9"}
    assert latest["c:c1"].purchases_total == 1 and latest["c:c1"].revenue_total == 10.0
    assert (stats.read, stats.accepted, sum(stats.dead_lettered.values())) == (5, 3, 2)
    assert (stats.customers, stats.visitors) == (1, 1)


def test_file_replay_to_redis_and_dead_letter_file(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    src = tmp_path / "events.jsonl"
    lines = [_line(i, f"c{i % 3}") for i in range(30)] + [b"not json", b'{"type":"x"}']
    src.write_bytes(b"\n".join(lines) + b"\n")
    dead_path = tmp_path / "dl.jsonl"
    stats = FlowStats()
    flow = build_flow(
        JsonlFilesSource([src], batch_size=7),
        RedisProfileSink(redis_url),
        DeadLetterFileSink(dead_path),
        stats,
    )
    run_main(flow)
    assert stats.read == 32 and stats.accepted == 30
    dead = [orjson.loads(x) for x in dead_path.read_bytes().splitlines()]
    assert [(d["reason"], d["data"], d["position"]) for d in dead] == [
        ("invalid_json", "not json", f"file:{src}:31"),
        ("missing_field:event_id", '{"type":"x"}', f"file:{src}:32"),
    ]
    st0 = read_profile(redis_client, customer_key("c0"))
    assert st0 is not None and st0.events_total == 10
    assert render(st0, T0 + 10**6)["counts"] == {"page_view": 10}
    # Writes are absolute: replaying the same file again leaves identical bytes.
    before = redis_client.hgetall("nb:{c:c0}:profile")
    run_main(
        build_flow(
            JsonlFilesSource([src]),
            RedisProfileSink(redis_url),
            DeadLetterFileSink(tmp_path / "dl2.jsonl"),
            FlowStats(),
        )
    )
    assert redis_client.hgetall("nb:{c:c0}:profile") == before
    assert redis_client.object("encoding", "nb:{c:c0}:profile") in (b"listpack", b"ziplist")

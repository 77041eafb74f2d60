"""The profile dataflow end to end in-process: identity, lateness, duplicates, retention, Redis."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.config import FlowConfig
from dataflows.flow import FlowStats, build_flow
from dataflows.records import RawRecord, Rejected, SinkOp
from dataflows.sinks import DeadLetterFileSink, RedisSink
from dataflows.sources import JsonlFilesSource
from features.clock import EventClock
from features.document import profile_document
from features.identity import DeviceState, on_event
from features.store import BOUNDARIES_KEY, read_link, read_profile
from schemas import Event
from schemas.keys import customer_key, device_key
from tests.conftest import flow_config

T0 = 1_772_359_200_000  # 2026-03-01T10:00:00Z
MIN = 60_000
DAY = 86_400_000


def ev(i: int, type_: str, ts: int, **kw: Any) -> RawRecord:
    d = {"event_id": f"e{i}", "type": type_, "ts": ts, **kw}
    return RawRecord(orjson.dumps(d), f"t:{i}")


def run(
    records: list[RawRecord], redis_url: str, cfg: FlowConfig | None = None
) -> tuple[FlowStats, list[Rejected]]:
    dead: list[Rejected] = []
    stats = FlowStats()
    flow = build_flow(TestingSource(records), RedisSink(redis_url), TestingSink(dead),
                      config=cfg or flow_config())  # fmt: skip
    run_main(flow)
    return stats, dead


def doc(client: redis.Redis, key: str, as_of: int) -> dict[str, Any] | None:
    view, bounds = read_profile(client, key)
    return None if view is None else profile_document(view, as_of, bounds)


def test_pre_login_history_becomes_the_customers(redis_url: str, redis_client: redis.Redis) -> None:
    records = [
        ev(1, "page_view", T0, anonymous_id="a1", session_id="s1"),
        ev(2, "product_view", T0 + MIN, anonymous_id="a1", session_id="s1", product_id="p",
           category="shoes", price=20.0),
        ev(3, "add_to_cart", T0 + 2 * MIN, anonymous_id="a1", session_id="s1", product_id="p",
           category="shoes", price=20.0, quantity=1),
        ev(4, "login", T0 + 3 * MIN, anonymous_id="a1", customer_id="c1", session_id="s1"),
        ev(5, "page_view", T0 + 4 * MIN, anonymous_id="a1", session_id="s1"),
        ev(6, "page_view", T0 + 5 * MIN, customer_id="c1", session_id="s1"),
    ]  # fmt: skip
    stats, dead = run(records, redis_url)
    assert dead == [] and stats.accepted == 6
    d = doc(redis_client, customer_key("c1"), T0 + 10 * MIN)
    assert d is not None
    assert d["page_views_1h"] == 3  # one before login, one anonymous after, one as customer
    assert d["product_views_1h"] == 1 and d["add_to_carts_1h"] == 1
    assert d["sessions_7d"] == 1  # the session spanning the login counts once
    assert d["cart_items"] == 1 and d["cart_value"] == 20.0
    assert d["top_categories"][0] == "shoes"
    assert [(i["anonymous_id"], i["customer_id"]) for i in d["identities"]] == [("a1", "c1")]
    # The anonymous profile is gone; the device points at its customer.
    assert read_profile(redis_client, device_key("a1"))[0] is None
    assert read_link(redis_client, "a1") == "c1"


def test_shared_device_relinks_and_nothing_moves(redis_url: str, redis_client: redis.Redis) -> None:
    records = [
        ev(1, "login", T0, anonymous_id="d", customer_id="c1"),
        ev(2, "page_view", T0 + MIN, anonymous_id="d"),
        ev(3, "page_view", T0 + 2 * MIN, anonymous_id="d"),
        ev(4, "login", T0 + 10 * MIN, anonymous_id="d", customer_id="c2"),
        ev(5, "page_view", T0 + 11 * MIN, anonymous_id="d"),
        # late but within the lateness: it happened while the device was c1's
        ev(6, "page_view", T0 + 3 * MIN, anonymous_id="d"),
    ]
    _, dead = run(records, redis_url)
    assert dead == []
    c1 = doc(redis_client, customer_key("c1"), T0 + 20 * MIN)
    c2 = doc(redis_client, customer_key("c2"), T0 + 20 * MIN)
    assert c1 is not None and c2 is not None
    assert c1["page_views_1h"] == 3 and c2["page_views_1h"] == 1
    assert read_link(redis_client, "d") == "c2"


def test_never_linked_visitor_keeps_an_anonymous_profile(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _, dead = run([ev(1, "page_view", T0, anonymous_id="v"),
                   ev(2, "product_view", T0 + MIN, anonymous_id="v", category="bags")],
                  redis_url)  # fmt: skip
    d = doc(redis_client, device_key("v"), T0 + 2 * MIN)
    assert dead == [] and d is not None
    assert d["kind"] == "anonymous" and d["anonymous_id"] == "v"
    assert d["page_views_1h"] == 1 and d["top_categories"] == ["bags"]
    assert read_link(redis_client, "v") is None


def test_late_and_duplicate_events(redis_url: str, redis_client: redis.Redis) -> None:
    cfg = flow_config(lateness_ms=10 * MIN)
    records = [
        ev(1, "page_view", T0 + 60 * MIN, customer_id="c"),
        ev(2, "page_view", T0 + 55 * MIN, customer_id="c"),  # 5 min behind: applied
        ev(1, "page_view", T0 + 60 * MIN, customer_id="c"),  # duplicate: ignored, counted
        ev(3, "page_view", T0 + 30 * MIN, customer_id="c"),  # 30 min behind: late
        ev(4, "page_view", T0, anonymous_id="x"),
        ev(5, "page_view", T0 - 20 * MIN, anonymous_id="x"),  # late on the anonymous profile
    ]
    stats, dead = run(records, redis_url, cfg)
    assert sorted((r.record.position, r.error.reason) for r in dead) == [
        ("t:3", "late"), ("t:5", "late")
    ]  # fmt: skip
    assert stats.duplicates == 1
    assert stats.read == 6 and stats.accepted == 4
    assert stats.accepted + sum(stats.dead_lettered.values()) == stats.read
    d = doc(redis_client, customer_key("c"), T0 + 61 * MIN)
    assert d is not None and d["page_views_1h"] == 2


def test_retention_drops_quiet_profiles_in_event_time(
    redis_url: str, redis_client: redis.Redis
) -> None:
    cfg = flow_config(lateness_ms=10 * MIN, retention_ms=2 * DAY)
    records = [
        ev(1, "page_view", T0, customer_id="quiet"),
        ev(2, "page_view", T0, anonymous_id="quiet-device"),
        ev(3, "page_view", T0 + DAY, customer_id="busy"),
        ev(4, "page_view", T0 + 3 * DAY, customer_id="busy"),  # watermark passes T0 + 2 days
    ]
    stats, _ = run(records, redis_url, cfg)
    assert stats.dropped == 2
    assert read_profile(redis_client, customer_key("quiet"))[0] is None
    assert read_profile(redis_client, device_key("quiet-device"))[0] is None
    assert read_profile(redis_client, customer_key("busy"))[0] is not None


def test_rfm_boundaries_published_and_scored(redis_url: str, redis_client: redis.Redis) -> None:
    records = []
    n = 0
    for c in range(60):
        for k in range(1 + c % 5):
            n += 1
            records.append(ev(n, "purchase", T0 + c * MIN + k, customer_id=f"c{c}",
                              total=float(10 + c), order_id=f"o{n}"))  # fmt: skip
    run(records, redis_url, flow_config(rfm_publish_every=50))
    assert redis_client.get(BOUNDARIES_KEY)
    best = doc(redis_client, customer_key("c59"), T0 + DAY)
    worst = doc(redis_client, customer_key("c0"), T0 + DAY)
    assert best is not None and worst is not None
    assert best["rfm_m"] == 5 and worst["rfm_m"] == 1
    assert best["rfm_segment"] and worst["rfm_segment"]


def test_file_replay_to_redis_and_dead_letter_file(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    src = tmp_path / "events.jsonl"
    lines = [ev(i, "page_view", T0 + i * 1000, customer_id=f"c{i % 3}").data for i in range(30)]
    src.write_bytes(b"\n".join([*lines, b"not json", b'{"type":"x"}']) + b"\n")
    dead_path = tmp_path / "dl.jsonl"
    stats = FlowStats()
    run_main(build_flow(JsonlFilesSource([src], batch_size=7), RedisSink(redis_url),
                        DeadLetterFileSink(dead_path), config=flow_config()))  # fmt: skip
    assert stats.read == 32 and stats.accepted == 30
    dead = [orjson.loads(x) for x in dead_path.read_bytes().splitlines()]
    assert [(d["reason"], d["data"], d["position"]) for d in dead] == [
        ("invalid_json", "not json", f"file:{src}:31"),
        ("missing_field:event_id", '{"type":"x"}', f"file:{src}:32"),
    ]
    d = doc(redis_client, customer_key("c0"), T0 + 10**6)
    assert d is not None and d["events_total"] == 10
    # Writes are absolute: replaying the same file again leaves identical bytes.
    before = redis_client.hgetall("nb:{c:c0}:profile")
    again = DeadLetterFileSink(tmp_path / "dl2.jsonl")
    run_main(build_flow(JsonlFilesSource([src]), RedisSink(redis_url), again,
                        config=flow_config()))  # fmt: skip
    assert redis_client.hgetall("nb:{c:c0}:profile") == before
    assert redis_client.object("encoding", "nb:{c:c0}:profile") in (b"listpack", b"ziplist")


def test_flow_outputs_with_testing_sinks() -> None:
    ops: list[SinkOp] = []
    dead: list[Rejected] = []
    records = [ev(1, "page_view", T0, customer_id="c"), RawRecord(b"{", "t:2")]
    run_main(build_flow(TestingSource(records), TestingSink(ops), TestingSink(dead),
                        config=flow_config()))  # fmt: skip
    assert [r.error.reason for r in dead] == ["invalid_json"]
    assert [type(o).__name__ for o in ops] == ["WriteProfile"]


@pytest.mark.parametrize("obj", [EventClock(5), DeviceState("a")])
def test_state_classes_pickle_round_trip(obj: Any) -> None:
    if isinstance(obj, EventClock):
        obj.set_timer("k", "retention", 10)
        obj.advance(3)
    else:
        on_event(obj, Event(event_id="1", type="page_view", ts=T0, anonymous_id="a"), MIN)
        on_event(obj, Event(event_id="2", type="login", ts=T0 + 1, anonymous_id="a",
                            customer_id="c"), MIN)  # fmt: skip
    assert pickle.loads(pickle.dumps(obj)) == obj

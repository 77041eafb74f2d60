"""Traits: merge policy (latest wins, source priority), order independence (arrival order,
batching, identity merges), the policy file, the flow to Redis, segment rules and eligibility,
``nextbest import-traits`` end to end."""

from __future__ import annotations

import pickle
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import Consumer, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.flow import build_flow
from dataflows.records import RawRecord, Rejected
from dataflows.sinks import RedisSink
from decisions.catalog import parse_catalog
from features import profile as pf
from features.document import profile_document
from features.segments import advance, parse_segments
from features.store import read_profile
from features.trait_policy import TraitConfigError, load_policy
from features.traits import TraitPolicy
from nextbest.settings import ConfigError, Settings
from schemas import Event
from schemas.identifiers import UNSALTED
from schemas.keys import customer_key
from tests.conftest import flow_config, nextbest_cli

T0 = 1_772_359_200_000  # 2026-03-01T10:00:00Z
POLICY = TraitPolicy({"email": ("crm",), "loyalty_tier": ("loyalty", "crm")})


def identify(i: int, ts: int, source: str, cid: str = "c1", **traits: Any) -> Event:
    return Event(event_id=f"i{i}", type="identify", ts=ts, customer_id=cid, source=source,
                 traits=traits)  # fmt: skip


def test_latest_wins_and_source_priority() -> None:
    s = pf.new_state("c:c1")
    for e in (
        identify(1, T0, "crm", email="em:crm", loyalty_tier="gold", country="FR"),
        identify(2, T0 + 10, "web", email="em:web", loyalty_tier="bronze", country="DE"),
        identify(3, T0 - 10, "loyalty", loyalty_tier="silver"),  # older, but the owner
        identify(4, T0 + 20, "crm", loyalty_tier="platinum"),  # newer, but lower priority
    ):
        pf.apply_identify(s, e, POLICY)
    got = {n: (t.value, t.source) for n, t in s.traits.items()}
    assert got == {"email": ("em:crm", "crm"), "loyalty_tier": ("silver", "loyalty"),
                   "country": ("DE", "web")}  # fmt: skip
    # equal time: the greater event_id wins, whatever the order
    a, b = identify(8, T0 + 50, "web", country="IT"), identify(9, T0 + 50, "web", country="ES")
    for order in ((a, b), (b, a)):
        s2 = pf.new_state("c:c1")
        for e in order:
            pf.apply_identify(s2, e, POLICY)
        assert s2.traits["country"].value == "ES"


_offers = st.lists(
    st.tuples(
        st.integers(0, 5),  # ts step
        st.sampled_from(["crm", "web", "loyalty", "shop"]),
        st.dictionaries(
            st.sampled_from(["email", "loyalty_tier", "country", "vip"]),
            st.one_of(st.none(), st.sampled_from(["a", "b"]), st.integers(0, 3)),
            min_size=1,
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(offers=_offers, seed=st.integers(0, 2**16), cut=st.integers(0, 12))
def test_traits_do_not_depend_on_order_batching_or_merges(
    offers: list[tuple[int, str, dict[str, Any]]], seed: int, cut: int
) -> None:
    events = [identify(i, T0 + 1000 * t, src, **tr) for i, (t, src, tr) in enumerate(offers)]
    ref = pf.new_state("c:c1")
    for e in events:
        pf.apply_identify(ref, e, POLICY)
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    # one profile in another order, with duplicates
    one = pf.new_state("c:c1")
    for e in shuffled + shuffled[:cut]:
        pf.ingest(one, e, 600_000, POLICY)
    assert one.traits == ref.traits
    # two profiles (an anonymous history and the customer) merged, either way round
    left, right = pf.new_state("a:d"), pf.new_state("c:c1")
    for e in shuffled[:cut]:
        pf.apply_identify(left, e, POLICY)
    for e in shuffled[cut:]:
        pf.apply_identify(right, e, POLICY)
    pf.merge_into(right, left, policy=POLICY)
    assert right.traits == ref.traits
    assert pickle.loads(pickle.dumps(right)) == right  # (recovery snapshots)
    # the Redis projection round-trips
    assert pf.from_fields(pf.to_fields(right)).traits == pf.view(ref).traits


def test_policy_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "traits.yaml"
    bad.write_text("traits:\n  email: {priority: [crm]}\n  loyalty_tier: {priority: [Loyalty]}\n")
    with pytest.raises(TraitConfigError) as e:
        load_policy(bad)
    where = (e.value.file, e.value.line, e.value.field)
    assert where == (str(bad), 3, "traits.loyalty_tier.priority[0]")
    with pytest.raises(ConfigError, match=r"NEXTBEST_TRAITS: .*traits.yaml:3: field traits"):
        Settings.from_env({"NEXTBEST_TRAITS": str(bad)}).flow_config()
    assert load_policy().rank("email", "crm") == 1  # the shipped file loads


def test_traits_in_segment_rules_and_eligibility() -> None:
    s = pf.new_state("c:c1")
    pf.apply_identify(s, identify(1, T0, "loyalty", loyalty_tier="gold", vip=True), POLICY)
    doc = profile_document(pf.view(s), T0, None)
    assert doc["traits"]["loyalty_tier"] == {"value": "gold", "source": "loyalty",
                                             "ts": "2026-03-01T10:00:00Z"}  # fmt: skip
    segs = parse_segments("""
segments:
  - name: gold_members
    description: loyalty tier gold
    entry: {all: [{feature: traits.loyalty_tier, op: eq, value: gold},
                  {feature: traits.vip, op: eq, value: true}]}
""")
    members, out = advance(segs, doc, {}, T0)
    assert members["gold_members"].member and out[0].reason["values"] == {
        "traits.loyalty_tier": "gold", "traits.vip": True}  # fmt: skip
    assert advance(segs, {"traits": {}}, {}, T0)[0] == {}  # no such trait: not a member
    cat = parse_catalog("""
channels: {web: {}}
actions:
  - id: gold_perk
    description: a perk for gold members
    channels: [web]
    eligibility: {feature: traits.loyalty_tier, op: in, value: [gold, platinum]}
    value: 5
    prior: 0.1
""")
    rule = cat.actions[0].eligibility
    from features.segments.rules import holds

    assert rule is not None and holds(rule, lambda f: doc["traits"]["loyalty_tier"]["value"],
                                      lambda _: False)  # fmt: skip
    with pytest.raises(Exception, match=r"traits\.Tier"):
        parse_segments("segments:\n  - {name: x, description: y, "
                       "entry: {feature: traits.Tier, op: eq, value: gold}}\n")  # fmt: skip


def test_identify_through_the_flow_to_redis(redis_url: str, redis_client: redis.Redis) -> None:
    def rec(i: int, d: dict[str, Any]) -> RawRecord:
        return RawRecord(orjson.dumps({"event_id": f"e{i}", **d}), f"t:{i}")

    records = [
        rec(1, {"type": "page_view", "ts": T0, "customer_id": "c1"}),
        rec(2, {"type": "identify", "ts": T0 + 5000, "customer_id": "c1", "source": "web",
                "traits": {"loyalty_tier": "bronze", "first_name": "Jo"}}),
        rec(3, {"type": "identify", "ts": T0 - 86_400_000, "customer_id": "c1",  # old, not late
                "source": "loyalty", "traits": {"loyalty_tier": "gold"}}),
        rec(4, {"type": "identify", "ts": T0, "customer_id": "c2", "source": "crm",
                "traits": {"Bad": 1}}),
        rec(5, {"type": "identify", "ts": T0, "customer_id": "c3", "source": "crm",
                "traits": {"crm_id": "X9"}}),  # a CRM record without behaviour
    ]  # fmt: skip
    dead: list[Rejected] = []
    flow = build_flow(TestingSource(records), RedisSink(redis_url), TestingSink(dead),
                      config=flow_config(traits=POLICY))  # fmt: skip
    run_main(flow)
    assert [r.error.reason for r in dead] == ["bad_value:traits"]
    view, bounds = read_profile(redis_client, customer_key("c1"))
    assert view is not None
    doc = profile_document(view, T0 + 10_000, bounds)
    assert {n: (t["value"], t["source"]) for n, t in doc["traits"].items()} == {
        "loyalty_tier": ("gold", "loyalty"), "first_name": ("Jo", "web")}  # fmt: skip
    assert doc["events_total"] == 1  # identify is not behaviour
    view3, _ = read_profile(redis_client, customer_key("c3"))
    assert view3 is not None and view3.traits["crm_id"][0] == "X9"


def test_import_traits_cli_end_to_end(tmp_path: Path, kafka_brokers: str) -> None:
    export = tmp_path / "crm.csv"
    export.write_text(
        "customer_id,email,loyalty_tier,vip,ts\n"
        "42,Jane.Doe@Example.com,gold,yes,2026-03-01T10:00:00Z\n"
        "43,not-an-email,silver,no,\n"
        "44,,bronze,,1772359200000\n"
    )
    env = {
        "NEXTBEST_KAFKA_BROKERS": kafka_brokers,
        "NEXTBEST_HOME": str(tmp_path / "home"),
        "NEXTBEST_TOPIC_CLICKSTREAM": "traits-test",
        "NEXTBEST_IDENTITY_SALT": "s" * 20,
    }
    out = nextbest_cli("import-traits", str(export), "--source", "crm", "--json", env=env)
    summary = orjson.loads(out.stdout)
    assert (summary["accepted"], summary["rejected"]) == (2, 1)
    assert summary["rejected_by_reason"] == {"bad_value:email": 1}
    assert f"{export}:3: bad_value:email" in out.stderr
    missing = nextbest_cli("import-traits", str(tmp_path / "nope.csv"), "--source", "crm",
                           env=env, check=False)  # fmt: skip
    assert missing.returncode == 2 and "nope.csv" in missing.stderr
    consumer = Consumer({"bootstrap.servers": kafka_brokers, "group.id": "traits-test",
                         "enable.auto.commit": False})  # fmt: skip
    got: list[bytes] = []
    try:
        parts = consumer.list_topics("traits-test", timeout=10).topics["traits-test"].partitions
        consumer.assign([TopicPartition("traits-test", p, 0) for p in parts])
        deadline = time.monotonic() + 15
        while len(got) < 2 and time.monotonic() < deadline:
            got.extend(m.value() for m in consumer.consume(10, timeout=0.2) if m.error() is None)
    finally:
        consumer.close()
    events = sorted((orjson.loads(v) for v in got), key=lambda d: d["customer_id"])
    assert [e["customer_id"] for e in events] == ["42", "44"]
    assert events[0]["traits"]["email"].startswith("em:") and b"jane" not in b"".join(got).lower()
    assert events[0]["traits"]["vip"] == "yes" and events[0]["source"] == "crm"
    assert UNSALTED.email("jane.doe@example.com") != events[0]["traits"]["email"]  # salted

"""Identifiers through the flow: an email-only event resolves to its customer (before the claim
it waits in the identifier's own profile), a second claimant is a conflict on both profiles and
counted, nothing raw reaches Redis or the dead letters, batching does not change the result."""

from __future__ import annotations

import pickle
import random
from typing import Any

import orjson
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from dataflows.flow import build_flow
from dataflows.records import RawRecord, Rejected
from dataflows.sinks import RedisSink
from features.document import profile_document
from features.identifiers import IdentifierState, on_event
from features.store import read_profile
from schemas import Event
from schemas.identifiers import UNSALTED
from schemas.keys import customer_key, device_key
from tests.conftest import flow_config

T0 = 1_772_359_200_000  # 2026-03-01T10:00:00Z
EMAIL = UNSALTED.email("jane@example.com")
PHONE = UNSALTED.phone("+442079460958")


def rec(i: int, **d: Any) -> RawRecord:
    return RawRecord(orjson.dumps({"event_id": f"e{i}", "ts": T0 + i * 1000, **d}), f"t:{i}")


RECORDS = [
    rec(1, type="page_view", email="Jane@Example.com"),  # before any claim
    rec(2, type="identify", customer_id="c1", source="crm",
        traits={"email": "jane@example.com", "loyalty_tier": "gold"}),  # claims it
    rec(3, type="product_view", email=" JANE@example.COM ", product_id="p1"),  # resolves to c1
    rec(4, type="login", customer_id="c2", email="jane@example.com"),  # a second claimant
    rec(5, type="page_view", phone="0044 20 7946 0958"),  # unclaimed phone
    rec(6, type="page_view", phone="12"),
    rec(7, type="page_view", customer_id="c3", email="jane@"),
]  # fmt: skip


def run(redis_url: str, batch_size: int) -> list[Rejected]:
    dead: list[Rejected] = []
    flow = build_flow(TestingSource(RECORDS, batch_size), RedisSink(redis_url),
                      TestingSink(dead), config=flow_config())  # fmt: skip
    run_main(flow)
    return dead


def conflicts() -> float:
    return REGISTRY.get_sample_value("nextbest_identifier_conflicts_total", {"kind": "email"}) or 0


def dump(client: redis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for k in sorted(client.scan_iter(count=1000)):
        if k.startswith(b"nb:projection"):
            continue
        kind = client.type(k)
        out[k] = client.hgetall(k) if kind == b"hash" else client.dump(k)
    return out


def test_resolution_conflicts_and_no_raw_identifier(
    redis_url: str, redis_client: redis.Redis
) -> None:
    before = conflicts()
    dead = run(redis_url, batch_size=10)
    assert conflicts() - before == 1
    assert sorted(r.error.reason for r in dead) == ["bad_value:email", "bad_value:phone"]
    assert all(b"<redacted>" in r.record.data and b"jane@" not in r.record.data for r in dead)
    view, bounds = read_profile(redis_client, customer_key("c1"))
    assert view is not None
    d1 = profile_document(view, T0 + 10_000, bounds)
    # the email-only events (one before the claim, one after) are the customer's
    assert d1["counts"] == {"page_view": 1, "product_view": 1}
    assert d1["traits"]["email"]["value"] == EMAIL
    expected = [{"identifier": EMAIL, "kind": "email", "owner": "c1", "claimed_by": ["c1", "c2"]}]
    assert d1["identifier_conflicts"] == expected
    view2, _ = read_profile(redis_client, customer_key("c2"))
    assert view2 is not None
    d2 = profile_document(view2, T0 + 10_000, bounds)
    assert d2["identifier_conflicts"] == expected and d2["counts"] == {"login": 1}
    # the unclaimed phone waits in its own profile; the claimed email's went to c1
    assert read_profile(redis_client, device_key(PHONE))[0] is not None
    assert read_profile(redis_client, device_key(EMAIL))[0] is None
    everything = repr(dump(redis_client)).lower()
    for raw in ("jane", "example.com", "7946"):
        assert raw not in everything
    # batching does not change a byte
    first = dump(redis_client)
    redis_client.flushall()
    run(redis_url, batch_size=1)
    assert dump(redis_client) == first


@settings(max_examples=80, deadline=None)
@given(
    claims=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from(["c1", "c2", "c3"])), min_size=1, max_size=8
    ),
    seed=st.integers(0, 2**16),
)
def test_the_owner_is_the_first_claim_in_event_time_whatever_the_order(
    claims: list[tuple[int, str]], seed: int
) -> None:
    events = [
        Event(event_id=f"k{i}", type="login", ts=T0 + ts, customer_id=c, email=EMAIL)
        for i, (ts, c) in enumerate(claims)
    ]
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    st_ = IdentifierState(EMAIL)
    notes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for e in shuffled:
        for action in on_event(st_, e, 600_000):
            if action[0] == "conflict":
                for c in action[2]:
                    notes[c] = (action[1], action[2])
    assert pickle.loads(pickle.dumps(st_)) == st_  # (it lives in recovery snapshots)
    first = min(events, key=lambda e: (e.ts, e.event_id))
    claimants = tuple(sorted({c for _, c in claims}))
    assert st_.owner == first.customer_id and st_.claimants == claimants
    if len(claimants) > 1:  # every claimant's last note is the final record
        assert notes == {c: (first.customer_id, claimants) for c in claimants}
    else:
        assert notes == {}

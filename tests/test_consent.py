"""Consent (README, "Privacy"): order-independent decisions, and what each purpose changes:
analytics (events recorded), marketing (segments, targeted lists), personalization (decisions,
recommendations)."""

from __future__ import annotations

import itertools
from pathlib import Path

import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.flow import build_flow
from dataflows.records import SegmentEvent
from dataflows.sinks import RedisSink
from features import consent as cs
from features import profile as pf
from features.store import members_key, write_states
from nextbest.settings import Settings
from schemas import Event
from schemas.consent import ALL_GRANTED, parse_defaults
from serving.app import create_app
from tests.conftest import flow_config, nextbest_cli
from tests.test_segments_flow import SEGMENTS, _rec

T0 = 1_767_225_600_000
MIN = 60_000
L = 600_000


def consent(n: int, ts: int, who: str = "c1", **purposes: str) -> Event:
    return Event(event_id=f"k{n}", type="consent", ts=ts, customer_id=who, source="web",
                 purposes=purposes)  # fmt: skip


DECISIONS = st.lists(
    st.tuples(st.sampled_from(cs.PURPOSES), st.booleans(), st.integers(0, 50)),
    min_size=1, max_size=8,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(DECISIONS, st.randoms(use_true_random=False), st.integers(1, 7))
def test_consent_does_not_depend_on_order_or_stitching(
    decisions: list[tuple[str, bool, int]], rnd: object, split: int
) -> None:
    """Any arrival order, and any split over two profiles stitched later, gives the same
    consent and history."""
    events = [
        consent(i, T0 + t * MIN, **{p: "granted" if g else "withdrawn"})
        for i, (p, g, t) in enumerate(decisions)
    ]

    def run(order: list[Event]) -> tuple[object, object]:
        c: cs.Consent = {}
        h: cs.History = []
        for e in order:
            assert e.purposes is not None
            cs.offer(c, h, e.purposes, e.source or "", e.ts, e.event_id)
        return c, h

    want = run(events)
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert run(shuffled) == want
    a, b = run(shuffled[:split]), run(shuffled[split:])
    ca, ha = dict(a[0]), list(a[1])  # type: ignore[call-overload]
    cs.merge(ca, ha, dict(b[0]), list(b[1]))  # type: ignore[call-overload]
    assert (ca, ha) == want


def test_without_analytics_events_are_dropped_and_the_document_shows_the_history() -> None:
    s = pf.new_state("c:c1")
    page = Event(event_id="p1", type="page_view", ts=T0, customer_id="c1")
    assert pf.ingest(s, page, L) == pf.APPLIED
    assert pf.ingest(s, consent(1, T0 + MIN, analytics="withdrawn"), L) == pf.APPLIED
    later = Event(event_id="p2", type="page_view", ts=T0 + 2 * MIN, customer_id="c1")
    assert pf.ingest(s, later, L) == pf.NO_CONSENT
    crm = Event(event_id="i1", type="identify", ts=T0 + 3 * MIN, customer_id="c1",
                source="crm", traits={"loyalty_tier": "gold"})  # fmt: skip
    assert pf.ingest(s, crm, L) == pf.APPLIED  # (traits are not tracking)
    assert pf.ingest(s, consent(2, T0 + 4 * MIN, analytics="granted"), L) == pf.APPLIED
    assert pf.ingest(s, later, L) == pf.APPLIED
    doc = pf.render(pf.from_fields(pf.to_fields(s)), T0 + 5 * MIN)  # through the Redis fields
    assert doc["events_total"] == 2
    assert doc["consent"]["analytics"] == {"granted": True, "source": "web",
                                           "ts": "2026-01-01T00:04:00Z"}  # fmt: skip
    assert doc["consent"]["marketing"] == {"granted": True, "source": "default", "ts": None}
    assert [h["granted"] for h in doc["consent"]["history"]] == [False, True]
    # a configured default: analytics withdrawn until granted
    fresh = pf.new_state("c:c2")
    off = parse_defaults("analytics=withdrawn")
    assert pf.ingest(fresh, page, L, consent=off) == pf.NO_CONSENT


def test_marketing_withdrawn_leaves_every_segment_and_list(redis_url: str, tmp_path: Path) -> None:
    """An abandoned cart enters the segment; withdrawing marketing exits it (rule consent) and
    empties the targeted list; another abandoned cart meanwhile enters nothing; granting again
    enters it from then."""
    records = [
        _rec(0, type="add_to_cart", ts=T0, customer_id="m", price=5.0, quantity=1),
        _rec(1, type="page_view", ts=T0 + 40 * MIN, customer_id="other"),
        _rec(2, type="consent", ts=T0 + 50 * MIN, customer_id="m", source="web",
             purposes={"marketing": "withdrawn"}),
        _rec(3, type="add_to_cart", ts=T0 + 60 * MIN, customer_id="m", price=5.0, quantity=1),
        _rec(4, type="page_view", ts=T0 + 120 * MIN, customer_id="other"),
    ]  # fmt: skip
    url = f"{redis_url}?db=14"
    client = redis.Redis.from_url(url)
    client.flushdb()
    out: list[SegmentEvent] = []
    cfg = flow_config(segments=SEGMENTS)
    source = TestingSource([*records, TestingSource.ABORT()], batch_size=1)
    run_main(build_flow(source, RedisSink(url), TestingSink([]), config=cfg,
                        segment_sink=TestingSink(out)))  # fmt: skip
    got = [(t.direction, t.at, t.reason.get("rule")) for t in out if t.customer_id == "m"]
    assert got == [("entered", T0 + 30 * MIN, "entry"), ("exited", T0 + 50 * MIN, "consent")]
    assert client.zscore(members_key("cart_abandoned"), "m") is None  # the targeted list
    client.zadd(members_key("cart_abandoned"), {"other": T0})  # (a member the export lists)
    listed = nextbest_cli(
        "export",
        "--segment",
        "cart_abandoned",
        "--format",
        "jsonl",
        env={"NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path)},
    )
    assert '"other"' in listed.stdout and '"m"' not in listed.stdout
    more = [
        _rec(5, type="consent", ts=T0 + 130 * MIN, customer_id="m", source="web",
             purposes={"marketing": "granted"}),
    ]  # fmt: skip
    out.clear()
    client.flushdb()
    source = TestingSource([*records, *more, TestingSource.ABORT()], batch_size=2)
    run_main(build_flow(source, RedisSink(url), TestingSink([]), config=cfg,
                        segment_sink=TestingSink(out)))  # fmt: skip
    got = [(t.direction, t.at, t.reason.get("rule")) for t in out if t.customer_id == "m"]
    assert got[-1][:1] == ("entered",) and got[-1][1] == T0 + 130 * MIN
    assert client.zscore(members_key("cart_abandoned"), "m") == T0 + 130 * MIN
    client.flushdb()


def test_without_personalization_decisions_and_recommendations_are_not_personal(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    s = pf.new_state("c:np1")
    for e in (
        Event(event_id="v1", type="product_view", ts=T0, customer_id="np1", product_id="p-1",
              category="shoes"),
        consent(9, T0 + MIN, "np1", personalization="withdrawn"),
    ):  # fmt: skip
        assert pf.ingest(s, e, L) == pf.APPLIED
    write_states(client, [s])
    with TestClient(create_app(Settings.from_env({}), redis_url)) as api:
        as_of = {"as_of": str(T0 + 2 * MIN)}
        nba = api.get("/v1/customers/np1/next-best-action", params=as_of).json()
        assert nba["personal"] is False and nba["consent"] == {"personalization": False}
        reco = api.get("/v1/customers/np1/recommendations", params=as_of).json()
        assert reco["personal"] is False and reco["consent"] == {"personalization": False}
        prof = api.get("/v1/customers/np1/profile", params=as_of).json()
        assert prof["consent"]["personalization"]["granted"] is False
    # the same profile with consent: personal
    s.consent.clear()
    write_states(client, [s])
    with TestClient(create_app(Settings.from_env({}), redis_url)) as api:
        reco = api.get("/v1/customers/np1/recommendations", params=as_of).json()
        assert reco["personal"] is True and "consent" not in reco
    client.delete(*client.keys("nb:{c:np1}*"))


def test_defaults_parse_and_every_purpose_is_known() -> None:
    assert parse_defaults("") == ALL_GRANTED
    assert [cs.allows({}, p, parse_defaults(f"{p}=withdrawn")) for p in cs.PURPOSES] == [False] * 3
    assert list(itertools.chain(cs.PURPOSES)) == ["analytics", "personalization", "marketing"]

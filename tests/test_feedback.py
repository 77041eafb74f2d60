"""The feedback loop: decisions joined with their outcomes in event time (attribution windows,
late and unmatched outcomes), the action models learned in the dataflow whatever the batching,
conversions in the contact counters, and serving scoring actions with their models."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.flow import build_flow
from dataflows.records import RawRecord, Rejected, SinkOp, WriteCheckpoint, WriteConversion
from dataflows.sinks import RedisSink
from decisions.catalog import parse_catalog
from decisions.store import contacts_key
from models.action_labels import DecisionJoin
from models.online import checkpoint_meta
from schemas.decisions import Candidate, DecisionRecord, encode_decision
from schemas.events import parse_ts
from serving.scoring import ModelSet
from tests.conftest import flow_config

H = 3_600_000
DAY = 24 * H
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOWS = {"impression": H, "click": DAY, "conversion": 7 * DAY}
CATALOG = parse_catalog(
    """
min_outcomes: 20
attribution: {impression: 1h, click: 1d, conversion: 7d}
channels: {web: {}}
actions:
  - {id: a, description: first, channels: [web], value: 1, prior: 0.1}
  - {id: b, description: second, channels: [web], value: 1, prior: 0.1}
"""
)


def decision(did: str, ts: int, served: str = "a", key: str = "c:1", x: float = 1.0,
             degraded: bool = False) -> DecisionRecord:  # fmt: skip
    cands = [Candidate(action_id=a, propensity=0.1, source="prior", value=1.0, weight=1.0,
                       priority=0.1, probability=0.5) for a in ("a", "b")]  # fmt: skip
    return DecisionRecord(decision_id=did, ts=ts, key=key, channel="web", policy="epsilon_greedy",
                          epsilon=0.1, served=served, served_probability=0.5, selection="greedy",
                          candidates=cands, features={"x": x, "bias": 1.0},
                          customer_id=key[2:], degraded=degraded)  # fmt: skip


# -- the join (pure) ----------------------------------------------------------------------------


def test_attribution_windows_and_reasons() -> None:
    j = DecisionJoin(WINDOWS)
    j.decision(decision("d", T0))
    assert j.outcome("d", "a", "impression", T0 + H - 1, "i1") == []
    assert j.outcome("d", "a", "impression", T0 + H, "i2") == [
        ("unmatched", "i2", "outcome_outside_window")
    ]
    assert j.outcome("d", "a", "click", T0 - 1, "k0") == [
        ("unmatched", "k0", "outcome_outside_window")
    ]
    assert j.outcome("d", "b", "conversion", T0 + H, "v0") == [
        ("unmatched", "v0", "outcome_not_served")
    ]
    assert j.outcome("d", "a", "conversion", T0 + 7 * DAY - 1, "v1") == [
        ("conversion", "c:1", "a", T0 + 7 * DAY - 1)
    ]
    assert j.advance(T0 + 7 * DAY - 1) == ([], [])  # not closed yet
    examples, _ = j.advance(T0 + 7 * DAY)
    assert [(e.target, e.label, e.label_ts, e.features["x"]) for e in examples] == [
        ("action:a", 1, T0 + 7 * DAY, 1.0)
    ]
    assert j.outcome("d", "a", "click", T0 + 2 * H, "k1") == [("unmatched", "k1", "outcome_late")]
    # a degraded decision is joined but teaches nothing
    j.decision(decision("z", T0 + 8 * DAY, degraded=True))
    assert j.advance(T0 + 20 * DAY)[0] == []


def test_an_outcome_may_come_before_its_decision() -> None:
    j = DecisionJoin(WINDOWS)
    assert j.outcome("d", "a", "conversion", T0 + H, "v") == []  # waits
    assert j.decision(decision("d", T0)) == [("conversion", "c:1", "a", T0 + H)]
    assert j.outcome("e", "a", "click", T0 + H, "k") == []
    _, notes = j.advance(T0 + H + DAY)  # its click window passed: the decision never came
    assert notes == [("unmatched", "k", "outcome_unknown_decision")]
    examples, _ = j.advance(T0 + 8 * DAY)
    assert [e.label for e in examples] == [1]


Item = tuple[str, Any]


@st.composite
def histories(draw: st.DrawFn) -> list[Item]:
    n = draw(st.integers(1, 6))
    items: list[Item] = []
    for i in range(n):
        ts = T0 + draw(st.integers(0, 5 * DAY))
        served = draw(st.sampled_from(["a", "b"]))
        items.append(("d", decision(f"d{i}", ts, served, key=f"c:{i % 3}")))
        for k in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["impression", "click", "conversion"]))
            action = draw(st.sampled_from(["a", "b"]))
            at = ts + draw(st.integers(-H, 9 * DAY))
            items.append(("o", (f"d{draw(st.integers(0, n))}", action, kind, at, f"o{i}-{k}")))
    return items


def _run(items: list[Item], advances: list[int]) -> tuple[list[Any], list[Any]]:
    j = DecisionJoin(WINDOWS)
    notes: list[Any] = []
    examples: list[Any] = []
    marks = iter(sorted(advances))
    for n, (kind, v) in enumerate(items):
        got = j.decision(v) if kind == "d" else j.outcome(*v)
        notes.extend(got)
        if n % 2:
            ex, more = j.advance(next(marks, j.watermark))
            examples += ex
            notes += more
    ex, more = j.close_all()
    return examples + ex, notes + more


@settings(max_examples=150, deadline=None)
@given(items=histories(), seed=st.integers(0, 10**6))
def test_the_join_does_not_depend_on_arrival_order(items: list[Item], seed: int) -> None:
    """Any arrival order of decisions and outcomes (none of them late for the watermark) gives
    the same examples and the same notes."""
    ref_ex, ref_notes = _run(items, [])
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    # watermarks that never pass anything still to come: below every item's own time
    first = min(v.ts if k == "d" else v[3] for k, v in items)
    ex, notes = _run(shuffled, [first - H, first - 1])
    assert sorted(map(repr, ex)) == sorted(map(repr, ref_ex))
    assert sorted(map(repr, notes)) == sorted(map(repr, ref_notes))


# -- in the dataflow ----------------------------------------------------------------------------


def _event(i: int, ts: int, cid: str, **kw: Any) -> RawRecord:
    body = {"event_id": f"e{i}", "type": "page_view", "ts": ts, "customer_id": cid, **kw}
    return RawRecord(orjson.dumps(body), f"t:{i}")


def _outcome(i: int, did: str, action: str, kind: str, ts: int, cid: str) -> RawRecord:
    body = {"event_id": f"o{i}", "type": "decision_outcome", "ts": ts, "customer_id": cid,
            "decision_id": did, "action_id": action, "outcome": kind}  # fmt: skip
    return RawRecord(orjson.dumps(body), f"o:{i}")


def feedback_stream(n: int = 120) -> tuple[list[RawRecord], dict[str, int]]:
    """Traffic for 60 days; ``n`` decisions in the first 40 (x = 1 converts on action a, x = 0
    never does), their outcomes, and outcomes the join must reject."""
    rng = random.Random(7)
    out: list[RawRecord] = []
    positives = 0
    for k in range(n):
        ts = T0 + k * (40 * DAY // n)
        cid = f"c{k % 10}"
        x = float(k % 2)
        served = "a" if k % 3 else "b"
        rec = decision(f"d{k}", ts, served, key=f"c:{cid}", x=x)
        out.append(RawRecord(encode_decision(rec), f"d:{k}"))
        out.append(_outcome(10 * k, f"d{k}", served, "impression", ts + 1000, cid))
        if served == "a" and x == 1.0 and rng.random() < 0.8:
            out.append(_outcome(10 * k + 1, f"d{k}", "a", "conversion", ts + 2 * H, cid))
            positives += 1
    out += [_event(d, T0 + d * DAY + 5, "traffic") for d in range(61)]
    bad = [
        _outcome(900_001, "nope", "a", "click", T0 + DAY, "c1"),  # unknown decision
        _outcome(900_002, "d1", "b", "click", T0 + DAY, "c1"),  # not the served action
        _outcome(900_003, "d1", "a", "click", T0 + 5 * DAY, "c1"),  # outside the click window
        RawRecord(b'{"type":"decision","decision_id":"x","ts":0}', "d:bad"),  # a broken record
    ]
    out = sorted(out + bad, key=lambda r: parse_ts(orjson.loads(r.data)["ts"]) or 0)
    return out, {"positives": positives}


def _run_flow(records: list[RawRecord], batch_size: int) -> tuple[list[SinkOp], list[Rejected]]:
    ops: list[SinkOp] = []
    dead: list[Rejected] = []
    cfg = flow_config(actions=CATALOG, checkpoint_every=10**6, checkpoint_interval_ms=3_600_000)
    src = TestingSource(records, batch_size=batch_size)
    run_main(build_flow(src, TestingSink(ops), TestingSink(dead), config=cfg))
    return ops, dead


def test_the_flow_learns_action_models_from_joined_outcomes() -> None:
    records, truth = feedback_stream()
    ops, dead = _run_flow(records, 1)
    cps = {op.target: op for op in ops if isinstance(op, WriteCheckpoint)}
    assert {"action:a", "action:b"} <= set(cps)
    a = checkpoint_meta(cps["action:a"].data)["metrics"]
    b = checkpoint_meta(cps["action:b"].data)["metrics"]
    assert a["examples_seen"] == 80 and b["examples_seen"] == 40  # every decision, once
    assert a["positives"] == truth["positives"] and b["positives"] == 0
    conversions = [op for op in ops if isinstance(op, WriteConversion)]
    assert len(conversions) == truth["positives"] and {c.action for c in conversions} == {"a"}
    reasons = sorted(r.error.reason for r in dead)
    assert reasons == ["bad_decision", "outcome_not_served", "outcome_outside_window",
                       "outcome_unknown_decision"]  # fmt: skip


@pytest.mark.parametrize("batch_size", [3, 17])
def test_action_models_do_not_depend_on_the_batching(batch_size: int) -> None:
    records, _ = feedback_stream(60)
    one, _ = _run_flow(records, 1)
    other, _ = _run_flow(records, batch_size)

    def cps(ops: list[SinkOp]) -> dict[str, bytes]:
        return {op.target: op.data for op in ops if isinstance(op, WriteCheckpoint)
                and op.target.startswith("action:")}  # fmt: skip

    assert cps(one) and cps(one) == cps(other)


def test_without_a_catalogue_decision_records_are_dead_letters() -> None:
    rec = RawRecord(encode_decision(decision("d", T0)), "d:1")
    dead: list[Rejected] = []
    run_main(build_flow(TestingSource([rec]), TestingSink([]), TestingSink(dead),
                        config=flow_config()))  # fmt: skip
    assert [r.error.reason for r in dead] == ["decisions_off"]


def test_serving_scores_actions_with_their_models(
    redis_url: str, redis_client: redis.Redis
) -> None:
    records, _ = feedback_stream()
    cfg = flow_config(actions=CATALOG, checkpoint_every=10**6, checkpoint_interval_ms=3_600_000)
    run_main(build_flow(TestingSource(records, batch_size=50), RedisSink(redis_url),
                        TestingSink([]), config=cfg))  # fmt: skip
    cv = redis_client.hget(contacts_key("c:c1"), "cv|a")
    assert cv is not None and int(cv) > T0
    assert redis_client.pttl(contacts_key("c:c1")) > 0
    models = ModelSet(("action:a", "action:b"))
    models.refresh(redis_client)
    hot = models.propensity(CATALOG["a"], {"x": 1.0, "bias": 1.0})
    cold = models.propensity(CATALOG["a"], {"x": 0.0, "bias": 1.0})
    assert hot.source == "model" and hot.version is not None and hot.p > cold.p
    assert hot.contributions and hot.contributions[0][0] == "x"
    # b learned no conversion: it is not ready (a tenth of min_outcomes of each label), the prior
    assert models.propensity(CATALOG["b"], {"x": 1.0}).source == "prior"
    rows = {r["model"]: r for r in models.describe()}
    assert rows["action:a"]["examples_seen"] == 80

"""Segment rules, membership and flip times: unit tests and the flip-time property against a
dense evaluation of the real profile document."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import profile as pf
from features.document import profile_document
from features.profile import CART_ABANDON_MS, ProfileView
from features.registry import BY_NAME
from features.segments import (
    NOT_MEMBER,
    Membership,
    Segment,
    SegmentSet,
    advance,
    evaluate,
    load_segments,
    next_flip,
    parse_rule,
    parse_segments,
    transition_id,
)
from features.segments.rules import Cmp, compare
from features.windows import DAY, HOUR, MINUTE
from schemas.events import Event, format_ts

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def seg(
    name: str, entry: dict[str, Any], exit_: dict[str, Any] | None = None, d: int = 0
) -> Segment:
    return Segment(
        name,
        name,
        parse_rule(entry, "entry"),
        None if exit_ is None else parse_rule(exit_, "exit"),
        d,
    )


def ev(i: int, type_: str, ts: int, **kw: Any) -> Event:
    return Event(event_id=f"e{i}", type=type_, ts=ts, customer_id="c1", **kw)


def state_of(*events: Event) -> pf.ProfileState:
    s = pf.new_state("c:c1")
    for e in sorted(events, key=lambda e: (e.ts, e.event_id)):
        assert pf.ingest(s, e, lateness_ms=DAY) == "applied"
    return s


def doc_at(v: ProfileView, t: int, churn: float = 0.0) -> dict[str, Any]:
    d = profile_document(v, t, None)
    d["scores"] = {"churn": {"probability": churn}, "propensity": {"probability": 0.0}}
    return d


# --------------------------------------------------------------------------------------------
# Comparisons, evaluation and the state machine


def test_null_comparisons_are_false_and_exists_tests_non_null() -> None:
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        assert not compare(Cmp("avg_order_value", op, 1.0, "number"), None)  # type: ignore[arg-type]
    assert not compare(Cmp("avg_order_value", "not_in", (1.0,), "number"), None)
    assert compare(Cmp("avg_order_value", "exists", True, "number"), 3.0)
    assert compare(Cmp("avg_order_value", "exists", False, "number"), None)
    ts = parse_rule({"feature": "last_seen_ts", "op": "lt", "value": "2026-01-02T00:00:00Z"}, "e")
    assert (
        isinstance(ts, Cmp) and compare(ts, format_ts(T0)) and not compare(ts, format_ts(T0 + DAY))
    )
    top = parse_rule({"feature": "top_categories", "op": "contains", "value": "shoes"}, "e")
    assert isinstance(top, Cmp) and compare(top, ["books", "shoes"]) and not compare(top, [])


def test_evaluate_reads_the_serving_document() -> None:
    s = load_segments()
    st_ = state_of(
        ev(1, "add_to_cart", T0, price=10.0, quantity=1, category="shoes"),
        ev(2, "purchase", T0 - 40 * DAY, total=30.0),
    )
    v = pf.view(st_)
    doc = doc_at(v, T0 + CART_ABANDON_MS, churn=0.8)
    d = evaluate(s, doc, {})
    assert d["cart_abandoned"].entry and d["cart_abandoned"].exit is False
    assert d["at_risk"].entry and not d["at_risk"].exit
    assert d["at_risk"].values == {"purchases_total": 1, "score.churn": 0.8}
    assert not d["lapsed_30d"].entry and not d["new_customers"].entry
    assert d["loyal"].values == {"rfm_segment": "unscored", "segment.champions": False}
    assert not evaluate(s, doc_at(v, T0 + CART_ABANDON_MS - 1), {})["cart_abandoned"].entry


def test_hysteresis_and_exit_without_exit_rule() -> None:
    s = SegmentSet(
        (
            seg(
                "risk",
                {"feature": "score.churn", "op": "ge", "value": 0.7},
                {"feature": "score.churn", "op": "lt", "value": 0.6},
            ),
        )
    )
    v = pf.view(state_of(ev(1, "page_view", T0)))
    m: dict[str, Membership] = {}
    seen = []
    for i, p in enumerate([0.5, 0.72, 0.65, 0.61, 0.7, 0.59, 0.65, 0.69, 0.7]):
        m, out = advance(s, doc_at(v, T0 + i, churn=p), m, T0 + i)
        seen += [(t.direction, t.at) for t in out]
    assert seen == [("entered", T0 + 1), ("exited", T0 + 5), ("entered", T0 + 8)]


def test_references_read_the_same_evaluation() -> None:
    s = parse_segments("""
segments:
  - {name: b, description: x, entry: {segment: a}}
  - {name: a, description: x, entry: {feature: cart_items, op: gt, value: 0}}
""")
    v = pf.view(state_of(ev(1, "add_to_cart", T0, price=1.0, quantity=2)))
    _, out = advance(s, doc_at(v, T0), {}, T0)
    assert [(t.segment, t.direction) for t in out] == [("a", "entered"), ("b", "entered")]
    assert out[1].reason == {
        "rule": "entry",
        "condition": "in_segment(a)",
        "values": {"segment.a": True},
    }


def test_min_duration_enters_at_first_true_plus_duration() -> None:
    s = SegmentSet((seg("carty", {"feature": "cart_items", "op": "gt", "value": 0}, d=2 * HOUR),))
    v = pf.view(state_of(ev(1, "add_to_cart", T0, price=1.0, quantity=1)))
    m, out = advance(s, doc_at(v, T0), {}, T0)
    assert m == {"carty": Membership(False, None, T0)} and out == []
    assert next_flip(s, v, T0, m) == T0 + 2 * HOUR
    m2, out = advance(s, doc_at(v, T0 + 5 * HOUR), m, T0 + 5 * HOUR)  # a late evaluation
    assert m2 == {"carty": Membership(True, T0 + 2 * HOUR)}
    assert out[0].at == T0 + 2 * HOUR and out[0].reason["held_since"] == T0
    assert next_flip(s, v, T0 + 5 * HOUR, m2) is None


def test_records_pickle_and_ids_are_deterministic() -> None:
    s = load_segments()
    m = {"a": Membership(True, 5), "b": Membership(False, None, 7)}
    assert pickle.loads(pickle.dumps(m)) == m
    assert pickle.loads(pickle.dumps(s)).names == s.names
    assert pickle.loads(pickle.dumps(NOT_MEMBER)) == NOT_MEMBER
    a = transition_id("c:1", "at_risk", "entered", 5)
    assert (
        a
        == transition_id("c:1", "at_risk", "entered", 5)
        != transition_id("c:1", "at_risk", "exited", 5)
    )


# --------------------------------------------------------------------------------------------
# Flip times: examples


def test_flip_cart_abandoned_and_lapsed() -> None:
    s = load_segments()
    v = pf.view(state_of(ev(1, "add_to_cart", T0, price=10.0, quantity=1)))
    score = lambda target, t: 0.1  # noqa: E731
    m, _ = advance(s, doc_at(v, T0, 0.1), {}, T0)
    t = next_flip(s, v, T0, m, score_at=score)
    assert t == T0 + CART_ABANDON_MS
    m, out = advance(s, doc_at(v, t, 0.1), m, t)
    assert [(x.segment, x.direction) for x in out] == [("cart_abandoned", "entered")]
    t = next_flip(s, v, t, m, score_at=score)
    # then: lapsed_30d when days_since_last_seen (rounded to 3 decimals) reaches 30
    assert t == T0 + 30 * DAY - 43_200
    assert doc_at(v, t - 1)["days_since_last_seen"] == 29.999


def test_flip_windows_and_scores() -> None:
    s = SegmentSet(
        (
            seg("busy", {"feature": "page_views_1h", "op": "ge", "value": 2}),
            seg("risky", {"feature": "score.churn", "op": "ge", "value": 0.7}),
        )
    )
    v = pf.view(state_of(ev(1, "page_view", T0 + 10), ev(2, "page_view", T0 + 200_000)))
    m, _ = advance(s, doc_at(v, T0 + 200_000), {}, T0 + 200_000)
    assert m == {"busy": Membership(True, T0 + 200_000)}
    score = lambda target, t: 0.0 if t < T0 + 3 * DAY + 5 else 0.9  # noqa: E731
    t = next_flip(s, v, T0 + 200_000, m, score_at=score)
    # bucket [T0, T0 + 150 s) leaves the hour at 150 s + 1 h - 1 ms
    assert t == T0 + 150_000 + HOUR - 1
    m, _ = advance(s, doc_at(v, t), m, t)
    assert m == {}
    # the score crossing is seen at the next day tick after it (00:00 UTC), wherever the search
    # starts: the ticks are a fixed grid, so when the evaluations before happened does not matter
    assert T0 % DAY == 0
    for start in (t, t + 1, T0 + DAY - 1, T0 + 2 * DAY, T0 + 3 * DAY):
        assert next_flip(s, v, start, m, score_at=score) == T0 + 4 * DAY
    assert next_flip(s, v, t, m, score_at=score, score_horizon=DAY) == t + DAY


# --------------------------------------------------------------------------------------------
# Flip times: the property


TIMED = [f.name for f in BY_NAME.values() if f.kind in ("count", "money")]
GROWING = ["days_since_last_seen", "days_since_last_purchase", "tenure_days"]
DAYS = [0, 0.5, 1, 1.0005, 2, 2.9995, 3, 4.25, 7, 10]


@st.composite
def comparisons(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["window", "days", "cart", "static"]))
    if kind == "window":
        f = draw(st.sampled_from(TIMED))
        values: list[Any] = [0, 1, 2, 3] if BY_NAME[f].kind == "count" else [0, 9.99, 20.0, -5.0]
    elif kind == "days":
        f, values = draw(st.sampled_from(GROWING)), DAYS
    elif kind == "cart":
        return {
            "feature": "cart_abandoned",
            "op": draw(st.sampled_from(["eq", "ne"])),
            "value": draw(st.booleans()),
        }
    else:
        f, values = draw(st.sampled_from(["cart_items", "purchases_total"])), [0, 1, 2]
    op = draw(st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "exists"]))
    if op == "exists":
        return {"feature": f, "op": op, "value": draw(st.booleans())}
    if op in ("in", "not_in"):
        return {
            "feature": f,
            "op": op,
            "value": draw(st.lists(st.sampled_from(values), min_size=1, max_size=3)),
        }
    return {"feature": f, "op": op, "value": draw(st.sampled_from(values))}


def rules(refs: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    leaf = (
        comparisons()
        if not refs
        else st.one_of(
            comparisons(), comparisons(), st.sampled_from(refs).map(lambda r: {"segment": r})
        )
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda r: {"all": r}),
            st.lists(inner, min_size=1, max_size=3).map(lambda r: {"any": r}),
            inner.map(lambda r: {"not": r}),
        ),
        max_leaves=4,
    )


@st.composite
def segment_sets(draw: st.DrawFn) -> SegmentSet:
    out: list[Segment] = []
    for i in range(draw(st.integers(1, 3))):
        refs = [s.name for s in out]
        entry = draw(rules(refs))
        exit_ = draw(st.one_of(st.none(), rules(refs)))
        d = draw(st.sampled_from([0, 0, 0, 30 * MINUTE, 6 * HOUR + 1]))
        out.append(seg(f"s{i}", entry, exit_, d))
    return SegmentSet(tuple(out))


TYPES = ["page_view", "product_view", "add_to_cart", "remove_from_cart", "purchase", "refund"]


@st.composite
def views(draw: st.DrawFn) -> ProfileView:
    n = draw(st.integers(1, 12))
    events = []
    for i in range(n):
        t = draw(st.sampled_from(TYPES))
        ts = T0 + draw(st.one_of(st.integers(0, 3 * DAY), st.sampled_from([0, HOUR - 1, DAY])))
        kw: dict[str, Any] = {}
        if t in ("add_to_cart", "remove_from_cart"):
            kw = {"price": 5.0, "quantity": draw(st.integers(1, 2))}
        elif t in ("purchase", "refund"):
            kw = {"total": draw(st.sampled_from([9.99, 20.0, 5.0]))}
        events.append(ev(i, t, ts, session_id="s1", **kw))
    return pf.view(state_of(*events))


HORIZON = 12 * DAY


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segment_sets(), views(), st.integers(0, 4 * DAY), st.data())
def test_flip_time_agrees_with_dense_evaluation(
    s: SegmentSet, v: ProfileView, after: int, data: st.DataObject
) -> None:
    assert v.last_seen_ts is not None
    as_of = v.last_seen_ts + after
    m0, _ = advance(s, doc_at(v, as_of), {}, as_of)
    flip = next_flip(s, v, as_of, m0, horizon=HORIZON)
    end = as_of + HORIZON if flip is None else flip - 1

    def changed(t: int) -> bool:
        return advance(s, doc_at(v, t), m0, t)[0] != m0

    # densely: every 10 minutes, every bucket boundary (and 1 ms either side), random times
    times = set(range(as_of + 1, end + 1, 10 * MINUTE))
    for f in (BY_NAME[n] for n in TIMED):
        for series in (f.series, f.minus):
            assert series is not None or f.minus is None
            if series is None:
                continue
            for k in v.buckets.get(series.name, {}):
                for b in (k * series.gran, (k + 1) * series.gran + series.window - 1):
                    times.update((b - 1, b, b + 1))
    times.update(data.draw(st.lists(st.integers(as_of + 1, max(as_of + 1, end)), max_size=30)))
    times.add(end)
    for t in sorted(x for x in times if as_of < x <= end):
        assert not changed(t), (t - as_of, flip and flip - as_of)
    if flip is not None:
        assert as_of < flip <= as_of + HORIZON
        assert changed(flip)

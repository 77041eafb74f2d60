"""Unit tests of the pure profile features (features.profile, .windows, .interest)."""

from __future__ import annotations

import pickle
import statistics
from typing import Any

import pytest

from features import profile as pf
from features import registry
from features.interest import MAX_CATEGORIES
from features.windows import DAY, HOUR, MINUTE
from models.features import FEATURE_NAMES
from nextbest.readme import README, TABLES
from schemas.events import Event, Item, decode_event, parse_ts

T = 1_772_359_200_000  # 2026-03-01T10:00:00Z
L = 10 * MINUTE

_n = 0


def ev(type_: str, ts: int, **kw: Any) -> Event:
    """An event of customer c1 (override with customer_id=/anonymous_id=) with a fresh id."""
    global _n
    _n += 1
    kw.setdefault("event_id", f"u{_n}")
    if "anonymous_id" not in kw:
        kw.setdefault("customer_id", "c1")
    return Event(type=type_, ts=ts, **kw)


def state_of(*events: Event, key: str = "c:c1") -> pf.ProfileState:
    s = pf.new_state(key)
    for e in events:
        assert pf.ingest(s, e, L) == pf.APPLIED
    return s


def doc(s: pf.ProfileState, as_of: int) -> dict[str, Any]:
    return pf.render(pf.from_fields(pf.to_fields(s)), as_of)


def test_bought_40_days_ago_and_nothing_since() -> None:
    s = state_of(
        ev("product_view", T, category="shoes", session_id="s1"),
        ev("purchase", T + MINUTE, total=80.0, session_id="s1",
           items=[Item(product_id="p", category="shoes", price=80.0)]),
    )  # fmt: skip
    now = T + MINUTE + 40 * DAY
    d = doc(s, now)
    assert d["purchases_30d"] == 0 and d["purchases_7d"] == 0 and d["purchases_90d"] == 1
    assert d["revenue_30d"] == 0 and d["revenue_90d"] == 80.0
    assert d["days_since_last_purchase"] == 40.0
    assert d["days_since_last_seen"] == 40.0
    assert d["sessions_30d"] == 0 and d["sessions_7d"] == 0
    assert d["last_purchase_ts"] == "2026-03-01T10:01:00Z"
    assert d["first_seen_ts"] == "2026-03-01T10:00:00Z"
    assert d["tenure_days"] == 40.001
    assert d["top_categories"] == ["shoes"]
    # 6 points 40 days ago, half-life 7 days.
    assert d["category_scores"] == {"shoes": round(6.0 * 2 ** (-40 / 7), 4)}
    assert d["purchases_total"] == 1 and d["avg_order_value"] == 80.0
    # Before the purchase the as-of values are undefined, not negative.
    early = doc(s, T - DAY)
    assert early["days_since_last_purchase"] is None and early["tenure_days"] is None


def test_render_document_shape() -> None:
    s = state_of(ev("page_view", T, anonymous_id="dev-1"), key="a:dev-1")
    d = doc(s, T)
    assert list(d)[:3] == ["anonymous_id", "kind", "as_of"]
    assert d["anonymous_id"] == "dev-1" and d["kind"] == "anonymous"
    assert d["as_of"] == "2026-03-01T10:00:00Z"
    for absent in ("rfm_r", "rfm_f", "rfm_m", "rfm_segment", "customer_id"):
        assert absent not in d
    expected = {
        *(f"{k}_{w}" for k in ("page_views", "product_views", "add_to_carts")
          for w in ("1h", "24h", "7d")),
        "sessions_7d", "sessions_30d", "purchases_7d", "purchases_30d", "purchases_90d",
        "revenue_7d", "revenue_30d", "revenue_90d", "purchases_total", "revenue_total",
        "avg_order_value", "first_seen_ts", "last_seen_ts", "last_purchase_ts",
        "days_since_last_purchase", "days_since_last_seen", "tenure_days", "cart_items",
        "cart_value", "cart_abandoned", "top_categories", "category_scores", "counts",
        "events_total", "identities", "traits", "identifier_conflicts", "consent",
    }  # fmt: skip
    assert set(d) == {"anonymous_id", "kind", "as_of"} | expected
    assert d["avg_order_value"] is None and d["last_purchase_ts"] is None
    assert d["counts"] == {"page_view": 1} and d["events_total"] == 1


def test_cart_abandoned_after_30_quiet_minutes() -> None:
    s = state_of(
        ev("add_to_cart", T, price=19.99, quantity=2),
        ev("add_to_cart", T + MINUTE, price=5.0),
        ev("remove_from_cart", T + 2 * MINUTE, price=19.99),
    )
    last = T + 2 * MINUTE
    d = doc(s, last + 30 * MINUTE - 1)
    assert (d["cart_items"], d["cart_value"], d["cart_abandoned"]) == (2, 24.99, False)
    assert doc(s, last + 30 * MINUTE)["cart_abandoned"] is True
    # A later event (of any kind) restarts the quiet time; a purchase empties the cart.
    pf.ingest(s, ev("page_view", last + HOUR), L)
    assert doc(s, last + HOUR + MINUTE)["cart_abandoned"] is False
    assert doc(s, last + 2 * HOUR)["cart_abandoned"] is True
    pf.ingest(s, ev("purchase", last + 3 * HOUR, total=24.99), L)
    d = doc(s, last + 5 * HOUR)
    assert (d["cart_items"], d["cart_value"], d["cart_abandoned"]) == (0, 0.0, False)


def test_cart_never_below_zero() -> None:
    s = state_of(
        ev("add_to_cart", T, price=3.0),
        ev("remove_from_cart", T + 1, price=3.0, quantity=5),
        ev("remove_from_cart", T + 2, price=100.0),
        ev("add_to_cart", T + 3, price=0.1, quantity=3),
    )
    d = doc(s, T + 3)
    assert (d["cart_items"], d["cart_value"]) == (3, 0.3)


def test_refunds_subtract_at_their_own_time() -> None:
    s = state_of(
        ev("purchase", T, total=100.0),
        ev("purchase", T + DAY, total=50.0),
        ev("refund", T + 10 * DAY, total=30.0),
    )
    d = doc(s, T + 10 * DAY)
    assert d["revenue_total"] == 120.0
    assert d["avg_order_value"] == 60.0  # net: (150 - 30) / 2
    assert d["purchases_total"] == 2 and d["purchases_7d"] == 0
    assert d["revenue_7d"] == -30.0  # only the refund is within the week
    assert d["revenue_30d"] == 120.0
    d = doc(s, T + 40 * DAY)
    assert d["revenue_30d"] == -30.0 and d["revenue_90d"] == 120.0
    assert d["counts"] == {"purchase": 2, "refund": 1}


def test_windows_use_event_time_and_edges() -> None:
    s = state_of(*(ev("page_view", T + i * MINUTE) for i in range(10)))
    last = T + 9 * MINUTE
    assert doc(s, last)["page_views_1h"] == 10
    # Well after: the hour is empty, the day and the week still count them.
    d = doc(s, last + 2 * HOUR)
    assert (d["page_views_1h"], d["page_views_24h"], d["page_views_7d"]) == (0, 10, 10)
    d = doc(s, last + 8 * DAY)
    assert (d["page_views_24h"], d["page_views_7d"]) == (0, 0)


def test_duplicates_and_late_events() -> None:
    s = pf.new_state("c:c1")
    first = ev("page_view", T, event_id="x")
    assert pf.ingest(s, first, L) == pf.APPLIED
    assert pf.ingest(s, first, L) == pf.DUPLICATE
    assert pf.ingest(s, ev("page_view", T - L, event_id="y"), L) == pf.APPLIED
    assert pf.ingest(s, ev("page_view", T - L - 1, event_id="z"), L) == pf.LATE
    # Out of order within the lateness: same result as in order.
    assert pf.to_fields(s) == pf.to_fields(
        state_of(ev("page_view", T - L, event_id="y"), ev("page_view", T, event_id="x"))
    )
    # An event id reused more than a day later is a new event.
    assert pf.ingest(s, ev("page_view", T + 2 * DAY, event_id="x"), L) == pf.APPLIED
    assert doc(s, T + 2 * DAY)["events_total"] == 3


def test_sessions_by_id_and_by_gap() -> None:
    s = state_of(
        ev("page_view", T, session_id="s1"),
        ev("page_view", T + MINUTE),  # no session id: a gap run
        ev("page_view", T + 30 * MINUTE),  # 29 minutes later: same run
        ev("page_view", T + 60 * MINUTE),  # 30 minutes later: a new run
        ev("page_view", T + 5 * HOUR, session_id="s1"),  # same session, however long
        ev("page_view", T + 10 * DAY, session_id="s1"),  # reused within 31 days: not recounted
    )
    assert doc(s, T + 10 * DAY)["sessions_30d"] == 3
    assert doc(s, T + 10 * DAY)["sessions_7d"] == 0
    pf.ingest(s, ev("page_view", T + 40 * DAY, session_id="s1"), L)  # after 31 days: a new one
    d = doc(s, T + 40 * DAY)
    assert (d["sessions_7d"], d["sessions_30d"]) == (1, 1)


def test_interest_weights_cap_and_names() -> None:
    s = state_of(
        ev("product_view", T, category="a"),
        ev("add_to_cart", T, category="b"),
        ev("search", T, category="c"),
        ev("purchase", T, total=1.0, items=[Item(product_id="p", category="d"),
                                             Item(product_id="q", category="d")]),
        ev("product_view", T, category="é" * 50),
    )  # fmt: skip
    d = doc(s, T)
    assert d["category_scores"] == {"d": 10.0, "b": 3.0, "a": 1.0, "é" * 30: 1.0, "c": 0.5}
    assert d["top_categories"] == ["d", "b", "a"]
    # Ties by name; at most 20 categories: the lowest goes.
    many = state_of(*(ev("product_view", T + i, category=f"k{i:02d}") for i in range(25)))
    scores = doc(many, T + 25)["category_scores"]
    assert len(scores) == MAX_CATEGORIES
    assert set(scores) == {f"k{i:02d}" for i in range(5, 25)}


def test_merge_counts_pre_login_history_and_a_session_spanning_login_once() -> None:
    anon = state_of(
        ev("page_view", T, anonymous_id="dev", session_id="s9"),
        ev("product_view", T + MINUTE, anonymous_id="dev", session_id="s9", category="toys"),
        ev("add_to_cart", T + 2 * MINUTE, anonymous_id="dev", session_id="s9", price=10.0),
        key="a:dev",
    )
    cust = state_of(ev("page_view", T - 3 * DAY, session_id="old"))
    login = ev("login", T + 3 * MINUTE, anonymous_id="dev", session_id="s9")
    assert pf.ingest(cust, login, L) == pf.APPLIED
    pf.merge_into(cust, anon)
    pf.record_link(cust, "dev", "c1", login.ts, login.event_id)
    assert pf.ingest(cust, ev("page_view", T + 4 * MINUTE, session_id="s9"), L) == pf.APPLIED
    d = doc(cust, T + 4 * MINUTE)
    assert d["page_views_1h"] == 2 and d["product_views_1h"] == 1 and d["add_to_carts_1h"] == 1
    assert d["sessions_7d"] == 2  # "old" and s9, which spans the login, once
    assert d["events_total"] == 6
    assert d["first_seen_ts"] == "2026-02-26T10:00:00Z"
    assert (d["cart_items"], d["cart_value"]) == (1, 10.0)
    assert d["top_categories"] == ["toys"]
    assert d["identities"] == [
        {"anonymous_id": "dev", "customer_id": "c1", "ts": "2026-03-01T10:03:00Z",
         "event_id": login.event_id}
    ]  # fmt: skip
    # The merged events are known: a redelivery of an anonymous event is a duplicate.
    assert pf.ingest(cust, ev("page_view", T, anonymous_id="dev", event_id="zz"), L) == pf.APPLIED
    redelivered = anon.buffer[0]
    assert pf.ingest(cust, redelivered, L) == pf.DUPLICATE


def test_merge_session_without_ids_spanning_login_counts_once() -> None:
    anon = state_of(ev("page_view", T, anonymous_id="dev"), key="a:dev")
    cust = state_of(ev("login", T + 10 * MINUTE), ev("page_view", T + 20 * MINUTE))
    pf.merge_into(cust, anon)
    assert doc(cust, T + 20 * MINUTE)["sessions_7d"] == 1


def test_merge_of_old_parts_and_the_cart_rule() -> None:
    # The anonymous cart is 2 days old; the customer bought yesterday: the purchase emptied it.
    anon = state_of(ev("add_to_cart", T, anonymous_id="dev", price=5.0), key="a:dev")
    cust = state_of(ev("purchase", T + DAY, total=9.0), ev("page_view", T + 2 * DAY))
    pf.merge_into(cust, anon)
    d = doc(cust, T + 2 * DAY)
    assert (d["cart_items"], d["add_to_carts_7d"], d["events_total"]) == (0, 1, 3)
    # The other way round: the cart was filled after the last purchase, so it stays.
    anon = state_of(ev("add_to_cart", T + 2 * DAY, anonymous_id="dev", price=5.0), key="a:dev")
    cust = state_of(ev("purchase", T + DAY, total=9.0), ev("page_view", T + 3 * DAY))
    pf.merge_into(cust, anon)
    assert doc(cust, T + 3 * DAY)["cart_items"] == 1
    # Merging into an empty customer adopts the anonymous history as it is.
    anon = state_of(ev("page_view", T, anonymous_id="dev", session_id="s"), key="a:dev")
    cust = pf.new_state("c:c1")
    pf.merge_into(cust, anon)
    assert pf.view(cust).buckets == pf.view(anon).buckets
    assert pf.last_event_ts(cust) == T


def test_identities_are_bounded_and_idempotent() -> None:
    s = pf.new_state("c:c1")
    for i in range(30):
        pf.record_link(s, f"dev{i}", "c1", T + i, f"login{i}")
        pf.record_link(s, f"dev{i}", "c1", T + i, f"login{i}")
    ids = pf.render(pf.view(s), T)["identities"]
    assert len(ids) == pf.MAX_IDENTITIES
    assert ids[0]["anonymous_id"] == "dev10" and ids[-1]["anonymous_id"] == "dev29"


def heavy_customer() -> pf.ProfileState:
    """A very active customer with long ids, 25 long categories and 20 links."""
    cid = "C" * 128
    s = pf.new_state("c:" + cid)
    ts = T
    for i in range(3000):
        ts += 47 * MINUTE if i % 7 else 20 * MINUTE
        t = ("page_view", "product_view", "add_to_cart", "purchase", "refund", "search")[i % 6]
        cat = f"{'ü' * 25}-{i % 25}"
        e = Event(
            event_id=f"{'E' * 100}{i}", type=t, ts=ts, customer_id=cid, category=cat,
            session_id=None if i % 3 else f"{'S' * 100}{i // 9}", price=999999.99,
            quantity=10000, total=99999999.99 if t in ("purchase", "refund") else None,
            items=[Item(product_id="p", category=cat)] if t == "purchase" else None,
        )  # fmt: skip
        assert pf.ingest(s, e, L) == pf.APPLIED
    for j in range(25):
        pf.record_link(s, "A" * 128, "X" * 128 if j % 2 else cid, ts + j, "L" * 120 + str(j))
    return s


def test_heavy_customer_fields_fit_listpack_limits() -> None:
    s = heavy_customer()
    fields = pf.to_fields(s)
    for name, value in fields.items():
        assert len(name.encode()) <= 64, name
        assert len(value.encode()) <= 64, (name, value)
    assert fields["v"] == "2"
    v = pf.from_fields({k.encode(): v.encode() for k, v in fields.items()})
    assert v == pf.view(s)
    d = pf.render(v, pf.last_event_ts(s))
    assert len(d["category_scores"]) == MAX_CATEGORIES
    assert len(d["identities"]) == pf.MAX_IDENTITIES
    assert d["identities"][-1]["customer_id"] == "C" * 128
    # The state stays bounded: the buffer, the duplicate map and the buckets.
    assert len(s.buffer) <= 64 and len(s.seen) < 100
    assert pickle.loads(pickle.dumps(s)) == s


def test_simulated_population_is_compact() -> None:
    from nextbest.simulator import SimConfig, generate

    states: dict[str, pf.ProfileState] = {}
    for line in generate(SimConfig(customers=150, days=20, seed=7)):
        e = decode_event(line)
        if isinstance(e, Event):
            s = states.setdefault(e.key, pf.new_state(e.key))
            assert pf.ingest(s, e, L) in (pf.APPLIED, pf.LATE)
    sizes = [len(pf.to_fields(s)) for k, s in states.items() if k.startswith("c:")]
    assert statistics.median(sizes) < 64 and max(sizes) < 128
    for s in states.values():
        for name, value in pf.to_fields(s).items():
            assert len(name.encode()) <= 64 and len(value.encode()) <= 64


def test_old_layout_is_rejected() -> None:
    with pytest.raises(pf.LayoutError):
        pf.from_fields({b"v": b"1", b"key": b"c:1", b"events_total": b"3"})


def test_small_example_from_json_lines() -> None:
    lines = [
        b'{"event_id":"1","type":"product_view","ts":"2026-03-01T10:00:00Z","customer_id":"42",'
        b'"category":"books","price":12.5}',
        b'{"event_id":"2","type":"add_to_cart","ts":"2026-03-01T10:01:00Z","customer_id":"42",'
        b'"category":"books","price":12.5,"quantity":2}',
    ]
    s = pf.new_state("c:42")
    for line in lines:
        e = decode_event(line)
        assert isinstance(e, Event)
        pf.ingest(s, e, L)
    as_of = parse_ts("2026-03-01T11:00:00Z")
    assert as_of is not None
    d = pf.render(pf.view(s), as_of)
    assert d["customer_id"] == "42" and d["cart_items"] == 2 and d["cart_value"] == 25.0
    assert d["cart_abandoned"] is True and d["add_to_carts_1h"] == 1
    decay = 2 ** (-1 / 24 / 7)  # one hour at a half-life of 7 days
    assert d["category_scores"] == {"books": round(1.0 * decay + 3.0 * decay ** (59 / 60), 4)}


# ------------------------------------------------------------------------------------------------
# The registry: storage orders are pinned (snapshots, checkpoints and CSV consumers rely on them)


def test_series_indexes_are_the_stored_ones() -> None:
    """Recovery snapshots hold packed bucket keys by series index: never renumber a series."""
    stored = [
        "pv1h",
        "pv24h",
        "pv7d",
        "vw1h",
        "vw24h",
        "vw7d",
        "ac1h",
        "ac24h",
        "ac7d",
        "pu7d",
        "pu30d",
        "pu90d",
        "rp7d",
        "rp30d",
        "rp90d",
        "rn7d",
        "rn30d",
        "rn90d",
        "se7d",
        "se30d",
    ]
    # append-only: new series may follow, the stored ones keep their index
    assert [(s.idx, s.name) for s in registry.SERIES][: len(stored)] == list(enumerate(stored))
    windows = {s.name: (s.window, s.gran) for s in registry.SERIES}
    assert windows["pv1h"] == (HOUR, 150_000) and windows["rp90d"] == (90 * DAY, 3 * DAY)
    assert windows["se30d"] == (30 * DAY, DAY)


def test_the_fold_adds_each_event_type_to_its_series() -> None:
    added = {
        t: ([s.name for s in ones], [s.name for s in cents])
        for t, (ones, cents) in registry.SERIES_ADDED_BY.items()
    }
    expected = {
        "page_view": (["pv1h", "pv24h", "pv7d"], []),
        "product_view": (["vw1h", "vw24h", "vw7d"], []),
        "add_to_cart": (["ac1h", "ac24h", "ac7d"], []),
        "purchase": (["pu7d", "pu30d", "pu90d"], ["rp7d", "rp30d", "rp90d"]),
        "refund": ([], ["rn7d", "rn30d", "rn90d"]),
    }
    assert {t: added[t] for t in expected} == expected
    assert [s.name for s in registry.SESSION_SERIES] == ["se7d", "se30d"]


def test_document_order_and_model_inputs_come_from_the_registry() -> None:
    s = pf.new_state("c:c1")
    pf.ingest(s, ev("purchase", T, total=12.0, category="toys"), L)
    doc = pf.render(pf.view(s), T)
    assert list(doc)[3:-3] == [f.name for f in registry.FEATURES]
    assert list(doc)[-3:] == ["traits", "identifier_conflicts", "consent"]
    assert list(doc)[:3] == ["customer_id", "kind", "as_of"]
    windowed = [f"log_{f.name}" for f in registry.FEATURES if f.model]
    assert list(FEATURE_NAMES[: len(windowed)]) == windowed
    assert not any(name.endswith("_1h") for name in FEATURE_NAMES)


def test_readme_tables_are_generated_from_their_declarations() -> None:
    text = README.read_text()
    for marker, table in TABLES.items():
        assert f"<!-- {marker}:start -->\n{table()}\n<!-- {marker}:end -->" in text, (
            f"README's {marker} is stale: run python -m nextbest.readme"
        )


def test_sessions_count_visits_not_back_office_events() -> None:
    """Only clickstream events open or extend a session: a refund or an order system's purchase
    days after the last visit (with or without a session id) is no new session."""
    s = pf.new_state("c:c1")
    t = T
    visit = [ev("page_view", t, session_id="s1"), ev("page_view", t + MINUTE)]
    later = [
        ev("refund", t + 3 * DAY, total=5.0),
        ev("purchase", t + 4 * DAY, total=9.0),
        ev("purchase", t + 5 * DAY, total=9.0, session_id="order-77"),
    ]
    for e in [*visit, *later]:
        assert pf.ingest(s, e, 10 * MINUTE) == pf.APPLIED
    doc = pf.render_state(s, t + 6 * DAY)
    assert doc["sessions_7d"] == 2  # s1, and the run of the page view without an id
    assert doc["purchases_7d"] == 2 and doc["events_total"] == 5
    pf.ingest(s, ev("page_view", t + 6 * DAY), 10 * MINUTE)  # a visit again: a new session
    assert pf.render_state(s, t + 6 * DAY)["sessions_7d"] == 3

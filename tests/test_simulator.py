"""The shop simulator: deterministic, contract-valid, honest truth, believable behaviour."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from nextbest.simulator import (
    DAY_MS,
    SimConfig,
    SimStats,
    fast_format_ts,
    generate,
    simulate_to_file,
)
from schemas.events import REASONS, DecodeError, Event, decode_event, format_ts

CUSTOMERS = 1000
DAYS = 30
HOLDOUT = 7
SEED = 11


class Run:
    """One simulation written to disk, decoded once."""

    def __init__(self, cfg: SimConfig, root: Path) -> None:
        self.cfg = cfg
        out, truth = root / "events.jsonl", root / "truth.jsonl"
        self.stats: SimStats = simulate_to_file(cfg, out, truth)
        self.raw = out.read_bytes()
        self.lines = self.raw.split(b"\n")[:-1]
        self.decoded = [decode_event(line) for line in self.lines]
        self.events: list[Event] = [e for e in self.decoded if isinstance(e, Event)]
        self.truth: list[dict[str, Any]] = [
            orjson.loads(line) for line in truth.read_bytes().splitlines()
        ]
        self.truth_by_id = {row["customer_id"]: row for row in self.truth}


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run with a 7-day holdout and 5 % bad lines."""
    cfg = SimConfig(customers=CUSTOMERS, days=DAYS, seed=SEED, holdout_days=HOLDOUT, bad_rate=0.05)
    return Run(cfg, tmp_path_factory.mktemp("held"))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same world without holdout and without bad lines."""
    cfg = SimConfig(customers=CUSTOMERS, days=DAYS, seed=SEED)
    return Run(cfg, tmp_path_factory.mktemp("full"))


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    cfg = SimConfig(customers=150, days=5, seed=3, bad_rate=0.05, holdout_days=1)
    a = list(generate(cfg))
    assert a == list(generate(cfg))
    assert a != list(generate(SimConfig(customers=150, days=5, seed=4, bad_rate=0.05)))
    assert len(a) > 100


def test_file_matches_generate(tmp_path: Path) -> None:
    cfg = SimConfig(customers=100, days=4, seed=5, bad_rate=0.1, holdout_days=1)
    stats = simulate_to_file(cfg, tmp_path / "ev.jsonl", None)
    lines = list(generate(cfg))
    assert (tmp_path / "ev.jsonl").read_bytes() == b"".join(line + b"\n" for line in lines)
    assert stats.events + stats.bad == len(lines)
    assert all(b"\n" not in line for line in lines)


def test_holdout_run_is_a_prefix_of_the_full_run(held: Run, full: Run) -> None:
    """Holdout and bad lines only filter/insert lines: the good events are the same world."""
    hold_ms = held.cfg.holdout_start_ms
    good_held = [
        line for line, e in zip(held.lines, held.decoded, strict=True) if isinstance(e, Event)
    ]
    prefix = [line for line, e in zip(full.lines, full.events, strict=True) if e.ts < hold_ms]
    assert good_held == prefix


# -- contract -------------------------------------------------------------------------------------


def test_good_lines_decode_and_bad_lines_are_rejected(held: Run) -> None:
    bad = [e for e in held.decoded if isinstance(e, DecodeError)]
    assert held.stats.bad == len(bad)
    assert held.stats.events == len(held.events)
    assert held.stats.by_type == dict(Counter(e.type for e in held.events))
    share = len(bad) / len(held.lines)
    assert 0.04 < share < 0.06
    reasons = Counter(e.reason for e in bad)
    assert set(reasons) <= REASONS
    for reason in (
        "invalid_json",
        "not_an_object",
        "too_large",
        "missing_field:event_id",
        "missing_field:type",
        "missing_field:customer_id",
        "unknown_type",
        "bad_timestamp",
        "bad_type:ts",
        "bad_type:customer_id",
        "no_identity",
    ):
        assert reasons[reason] > 0, reason


def test_event_ids_unique_and_ts_non_decreasing(held: Run) -> None:
    ids = [e.event_id for e in held.events]
    assert len(set(ids)) == len(ids)
    ts = [e.ts for e in held.events]
    assert all(a <= b for a, b in pairwise(ts))
    assert ts[0] >= held.cfg.start_ms


def test_holdout_excluded(held: Run, full: Run) -> None:
    assert max(e.ts for e in held.events) < held.cfg.holdout_start_ms
    assert max(e.ts for e in full.events) >= held.cfg.holdout_start_ms
    assert max(e.ts for e in full.events) < full.cfg.end_ms


def test_volume_and_mix(full: Run) -> None:
    per_person_day = len(full.events) / (CUSTOMERS * DAYS)
    assert 1.0 < per_person_day < 3.4
    types = Counter(e.type for e in full.events)
    assert types["product_view"] > types["add_to_cart"] > types["checkout_start"]
    assert types["checkout_start"] > types["purchase"] > types["refund"] > 0
    for t in ("page_view", "search", "remove_from_cart", "login", "signup", "logout"):
        assert types[t] > 0, t


def test_event_fields(full: Run) -> None:
    for e in full.events:
        assert e.session_id is not None or e.type == "refund"
        if e.type in ("product_view", "add_to_cart", "remove_from_cart"):
            assert e.product_id and e.category and e.price is not None and e.price > 0
        if e.type in ("add_to_cart", "remove_from_cart"):
            assert e.quantity is not None and e.quantity >= 1
        if e.type == "page_view":
            assert e.properties is not None and e.properties["page"].startswith("/")
        if e.type == "search":
            assert e.properties is not None and e.properties["query"]
        if e.type == "purchase":
            assert e.customer_id and e.order_id and e.currency == "EUR" and e.items
            assert e.total == pytest.approx(sum(i.price * i.quantity for i in e.items), abs=0.011)


def test_fast_format_ts_matches_format_ts() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        ms = rng.randrange(946_684_800_000, 4_102_444_800_000)
        if rng.random() < 0.2:
            ms -= ms % 1000
        assert fast_format_ts(ms) == format_ts(ms)


# -- identity -------------------------------------------------------------------------------------


def test_logins_link_anonymous_to_customer(full: Run) -> None:
    anon_seen: set[str] = set()
    links = 0
    for e in full.events:
        if e.type in ("login", "signup"):
            assert e.customer_id is not None and e.anonymous_id is not None
            links += 1
            if e.type == "signup":
                # A new customer's first sessions were anonymous on this device.
                assert e.anonymous_id in anon_seen
        elif e.customer_id is None:
            assert e.anonymous_id is not None
            anon_seen.add(e.anonymous_id)
    assert links > 0


def test_new_customers_appear_only_after_signup(full: Run) -> None:
    signed_up: set[str] = set()
    for e in full.events:
        if e.type == "signup":
            assert e.customer_id not in signed_up
            signed_up.add(e.customer_id)  # type: ignore[arg-type]
    assert signed_up
    first: dict[str, str] = {}
    for e in full.events:
        if e.customer_id is not None:
            first.setdefault(e.customer_id, e.type)
    for cid in signed_up:
        assert first[cid] == "signup"


def test_some_devices_are_shared(full: Run) -> None:
    users: dict[str, set[str]] = defaultdict(set)
    for e in full.events:
        if e.type in ("login", "signup"):
            assert e.anonymous_id is not None and e.customer_id is not None
            users[e.anonymous_id].add(e.customer_id)
    shared = [a for a, cs in users.items() if len(cs) >= 2]
    assert 0 < len(shared) < 0.06 * len(users)


def test_refunds_reference_an_earlier_purchase(full: Run) -> None:
    orders: dict[str, Event] = {}
    refunds = 0
    for e in full.events:
        if e.type == "purchase":
            assert e.order_id not in orders
            orders[e.order_id] = e  # type: ignore[index]
        elif e.type == "refund":
            refunds += 1
            p = orders[e.order_id]  # type: ignore[index]
            assert p.customer_id == e.customer_id
            assert e.ts - p.ts >= DAY_MS
            assert e.total is not None and p.total is not None and 0 < e.total <= p.total
    assert refunds > 0


# -- truth ----------------------------------------------------------------------------------------


def test_truth_one_row_per_customer(held: Run) -> None:
    ids = [row["customer_id"] for row in held.truth]
    assert len(ids) == len(set(ids)) == held.stats.customers
    in_output = {e.customer_id for e in held.events if e.customer_id is not None}
    assert in_output <= set(ids)
    assert len(in_output) > 0.7 * len(ids)
    hold_day = DAYS - HOLDOUT
    for row in held.truth:
        assert row["segment"] in ("loyal", "occasional", "churning")
        assert 0 < row["churn_hazard"] < 1
        assert 0 <= row["purchase_propensity"] <= 1
        assert 0 <= row["churn_probability"] <= 1
        assert row["churned"] == (row["churn_day"] is not None)
        if row["churned"]:
            assert 0 <= row["churn_day"] < DAYS
        assert row["signup_day"] is None or row["signup_day"] < hold_day
    per_customer = Counter(e.customer_id for e in held.events if e.customer_id is not None)
    for cid, n in per_customer.items():
        assert held.truth_by_id[cid]["events_before_holdout"] == n


def test_truth_is_honest(held: Run, full: Run) -> None:
    """The holdout outcomes equal what a re-simulation without holdout shows in that window."""
    hold_ms = held.cfg.holdout_start_ms
    purchases: Counter[str] = Counter()
    revenue: defaultdict[str, float] = defaultdict(float)
    active: set[str] = set()
    for e in full.events:
        if e.ts < hold_ms or e.customer_id is None:
            continue
        if e.type != "refund":
            active.add(e.customer_id)
        if e.type == "purchase":
            purchases[e.customer_id] += 1
            revenue[e.customer_id] += e.total or 0.0
    assert sum(purchases.values()) > 50
    for row in held.truth:
        cid = row["customer_id"]
        assert row["purchases_in_holdout"] == purchases[cid], cid
        assert row["revenue_in_holdout"] == pytest.approx(revenue[cid], abs=0.02)
        assert row["active_in_holdout"] == (cid in active), cid
        if row["churned"] and row["churn_day"] < DAYS - HOLDOUT:
            assert not row["active_in_holdout"]


def test_latent_traits_predict_the_holdout(held: Run) -> None:
    rows = sorted(held.truth, key=lambda r: r["purchase_propensity"])
    q = len(rows) // 4
    low = sum(r["purchases_in_holdout"] for r in rows[:q]) / q
    high = sum(r["purchases_in_holdout"] for r in rows[-q:]) / q
    assert high > 5 * low + 0.2
    # Calibration of the propensity (7 days, and the holdout is 7 days).
    expected = sum(r["purchase_propensity"] for r in rows)
    observed = sum(r["purchases_in_holdout"] > 0 for r in rows)
    assert 0.75 * expected < observed < 1.25 * expected
    # Calibration of the churn probability (no purchase in the whole holdout).
    expected = sum(r["churn_probability"] for r in rows)
    observed = sum(r["purchases_in_holdout"] == 0 for r in rows)
    assert 0.9 * expected < observed < 1.1 * expected
    gone = [r for r in rows if r["churned"] and r["churn_day"] < DAYS - HOLDOUT]
    assert gone and all(r["churn_probability"] == 1.0 for r in gone)
    # Churned customers are inactive, high hazard ones churn more.
    by_hazard = sorted(held.truth, key=lambda r: r["churn_hazard"])
    assert sum(r["churned"] for r in by_hazard[-q:]) > 2 * sum(r["churned"] for r in by_hazard[:q])
    # Past activity is informative about the holdout.
    busy = sorted(held.truth, key=lambda r: r["events_before_holdout"])
    assert sum(r["active_in_holdout"] for r in busy[-q:]) > 2 * sum(
        r["active_in_holdout"] for r in busy[:q]
    )


def test_churning_customers_decline_before_they_stop(full: Run) -> None:
    third = DAYS // 3
    start = full.cfg.start_ms
    counts: dict[str, list[int]] = {
        r["customer_id"]: [0, 0]
        for r in full.truth
        if r["segment"] == "churning" and r["signup_day"] is None
    }
    for e in full.events:
        c = counts.get(e.customer_id or "")
        if c is None:
            continue
        day = (e.ts - start) // DAY_MS
        if day < third:
            c[0] += 1
        elif day >= DAYS - third:
            c[1] += 1
    assert len(counts) > 50
    first = sum(c[0] for c in counts.values()) / len(counts)
    last = sum(c[1] for c in counts.values()) / len(counts)
    assert last < 0.5 * first


def test_evenings_busier_than_nights(full: Run) -> None:
    hours = Counter(datetime.fromtimestamp(e.ts / 1000, tz=UTC).hour for e in full.events)
    assert sum(hours[h] for h in (19, 20, 21)) > 4 * sum(hours[h] for h in (2, 3, 4))


def test_weekends_busier_than_weekdays(full: Run) -> None:
    per_day = Counter((e.ts - full.cfg.start_ms) // DAY_MS for e in full.events)
    by_weekday: defaultdict[int, list[int]] = defaultdict(list)
    for day, n in per_day.items():
        weekday = datetime.fromtimestamp(
            (full.cfg.start_ms + day * DAY_MS) / 1000, tz=UTC
        ).weekday()
        by_weekday[weekday].append(n)
    mean = {wd: sum(ns) / len(ns) for wd, ns in by_weekday.items()}
    assert (mean[5] + mean[6]) / 2 > 1.05 * sum(mean[wd] for wd in range(4)) / 4


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customers": -1},
        {"days": 0},
        {"days": 5, "holdout_days": 5},
        {"bad_rate": 1.0},
        {"start": "2026-01-01T00:00:00"},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)

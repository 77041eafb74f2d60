"""The recommendation evaluation: metrics on hand-made cases, the baselines, the protocol on a
small simulated history, determinism, and the latent truth's sanity (the oracle beats
popularity)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from nextbest.reco_eval import (
    DAY_MS,
    Aim,
    History,
    MethodScores,
    RecoReport,
    coverage,
    evaluate,
    format_report,
    hit_rate_at_k,
    ndcg_at_k,
    read_history,
    read_truth,
    session_prefixes,
)
from nextbest.simulator import SimConfig, _new_sim, fast_format_ts, simulate_to_file

# -- metrics --------------------------------------------------------------------------------------


def test_hit_rate_counts_lists_with_a_relevant_item_in_the_top_k() -> None:
    recs = [["a", "b", "c"], ["d", "e"], ["f"], []]
    rel = [{"c"}, {"d", "x"}, {"y"}, {"a"}]
    assert hit_rate_at_k(recs, rel, k=3) == 0.5
    assert hit_rate_at_k(recs, rel, k=2) == 0.25  # "c" is third
    # Duplicates do not push a relevant item out of the top k.
    assert hit_rate_at_k([["a", "a", "a", "b"]], [{"b"}], k=2) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        hit_rate_at_k([["a"]], [], k=1)


def test_ndcg_binary_relevance() -> None:
    assert ndcg_at_k(["a", "b", "c"], {"a", "b"}, k=3) == pytest.approx(1.0)
    # One relevant item at rank 2 (0-based 1): 1/log2(3); ideal 1.
    assert ndcg_at_k(["x", "a"], {"a"}, k=5) == pytest.approx(1 / math.log2(3))
    # Two relevant, found at ranks 0 and 2; ideal ranks 0 and 1.
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, k=3) == pytest.approx(expected)
    # The ideal is capped at k: three relevant, k = 1, first is relevant.
    assert ndcg_at_k(["a"], {"a", "b", "c"}, k=1) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], {"a"}, k=1) == 0.0
    assert ndcg_at_k(["a"], set(), k=3) == 0.0


def test_coverage_and_prefixes() -> None:
    assert coverage([["a", "b", "z"], ["b"]], {"a", "b", "c", "d"}, k=2) == 0.5
    assert coverage([["a"]], set(), k=2) == 0.0
    assert list(session_prefixes([["a", "b", "c"], ["x"]])) == [(["a"], "b"), (["a", "b"], "c")]
    assert list(session_prefixes([["a", "a", "b"]])) == [(["a", "a"], "b")]


def test_category_popularity_interleaves_by_share() -> None:
    h = History(
        popularity={"s1": 9.0, "s2": 8.0, "s3": 7.0, "b1": 5.0, "b2": 4.0, "g1": 20.0},
        product_category={"s1": "shoes", "s2": "shoes", "s3": "shoes", "b1": "books"}
        | {"b2": "books", "g1": "garden"},
        customer_categories={"c": {"shoes": 2.0, "books": 1.0}},
    )
    # D'Hondt: shoes (quotient 2), then shoes (2/2 = 1, ties books' 1: the larger share wins),
    # books (1 > 2/3), shoes (2/3 > 1/2).
    assert h.category_popularity("c", 4) == ["s1", "s2", "b1", "s3"]
    # Categories run out: global popularity fills up.
    assert h.category_popularity("c", 7) == ["s1", "s2", "b1", "s3", "b2", "g1"]
    assert h.category_popularity("unknown", 2) == ["g1", "s1"]
    assert h.global_popularity(3) == ["g1", "s1", "s2"]


def test_read_history_weights_window_and_bad_lines(tmp_path: Path) -> None:
    end = 1_700_000_000_000

    def ev(n: int, typ: str, days_ago: float, **kw: Any) -> bytes:
        ts = fast_format_ts(end - int(days_ago * DAY_MS))
        return orjson.dumps({"event_id": f"e{n}", "type": typ, "ts": ts, **kw})

    lines = [
        ev(1, "product_view", 40, customer_id="c", product_id="old", category="books"),
        ev(2, "product_view", 1, customer_id="c", product_id="a", category="shoes"),
        ev(3, "add_to_cart", 1, anonymous_id="x", product_id="b", category="shoes", quantity=1),
        ev(
            4,
            "purchase",
            0,
            customer_id="c",
            order_id="o",
            total=1.0,
            currency="EUR",
            items=[{"product_id": "c", "category": "home", "price": 1.0, "quantity": 1}],
        ),
        b"{not json",
        b'{"type": "product_view"}',
        ev(5, "page_view", 0, customer_id="c"),
    ]
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    h = read_history(path)
    assert h.end_ms == end
    assert h.products == {"old", "a", "b", "c"}
    assert h.popularity == {"a": 1.0, "b": 3.0, "c": 5.0}  # "old" is outside the 30 days
    assert h.global_popularity(10) == ["c", "b", "a"]
    assert h.customer_categories == {"c": {"books": 1.0, "shoes": 1.0, "home": 5.0}}


def test_report_aims_and_formats() -> None:
    scores = {
        "engine": MethodScores(0.4, 0.2, 0.1),
        "global_popularity": MethodScores(0.2, 0.1, 0.01),
        "category_popularity": MethodScores(0.3, 0.15, 0.05),
        "oracle": MethodScores(0.9, 0.5, 0.2),
    }
    r = RecoReport(10, 100, 50, 120, 900, scores, {"engine": 0.3, "popularity": 0.2})
    aims = {a.name: a for a in r.aims}
    assert aims["hit rate vs global popularity"] == Aim("hit rate vs global popularity", 2.0, 1.5)
    assert aims["hit rate vs global popularity"].met
    assert not aims["hit rate vs oracle"].met  # 0.44 < 0.5
    assert not aims["next product vs popularity"].met  # 1.5 < 2
    text = format_report(r)
    assert "category_popularity" in text and "0.900" in text and "2.00x" in text
    assert orjson.loads(orjson.dumps(r.to_json()))["aims"][0]["met"] is True


# -- the protocol on simulated histories ----------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimConfig, Path, Path]:
    cfg = SimConfig(customers=400, days=40, holdout_days=10, seed=4, bad_rate=0.02)
    root = tmp_path_factory.mktemp("reco")
    simulate_to_file(cfg, root / "events.jsonl", root / "truth.jsonl")
    return cfg, root / "events.jsonl", root / "truth.jsonl"


def test_protocol_with_a_popularity_engine(small: tuple[SimConfig, Path, Path]) -> None:
    _, events, truth = small
    h = read_history(events)
    calls: list[tuple[str, list[str] | None, int]] = []

    def popular(cid: str, prefix: list[str] | None, k: int) -> list[str]:
        calls.append((cid, prefix, k))
        return h.global_popularity(k)

    report = evaluate(events, truth, popular)
    rows = read_truth(truth)
    buyers = [r for r in rows if r.products_in_holdout]
    sessions = [s for r in rows for s in r.holdout_sessions]
    prefixes = list(session_prefixes(sessions))
    assert report.customers == len(buyers) > 20
    assert report.sessions == len(sessions) > 50
    assert report.prefixes == len(prefixes) > 100
    assert report.products_in_history == len(h.products)
    # The engine is global popularity: the same scores.
    assert report.scores["engine"] == report.scores["global_popularity"]
    assert report.next_product["engine"] == report.next_product["popularity"]
    assert {a.name: a.ratio for a in report.aims}["hit rate vs global popularity"] == 1.0
    # Calls: buyers first without a prefix, then every prefix, in the truth's order.
    assert [c for c, p, _ in calls if p is None] == [r.customer_id for r in buyers]
    assert [p for _, p, _ in calls if p is not None] == [p for p, _ in prefixes]
    assert all(k == 10 for _, _, k in calls)


def test_protocol_rewards_the_last_click(small: tuple[SimConfig, Path, Path]) -> None:
    """A recommender that knows the latent collections beats popularity on the next product;
    one that repeats the prefix scores nothing (a repeated product is never the target)."""
    cfg, events, truth = small
    h = read_history(events)
    cat = _new_sim(cfg).cat
    index = {item[0]: i for i, item in enumerate(cat.items)}

    def collection(cid: str, prefix: list[str] | None, k: int) -> list[str]:
        if not prefix:
            return h.category_popularity(cid, k)
        last = index[prefix[-1]]
        mates = [cat.items[j][0] for j in cat.collection[last] if j != last]
        comps = [cat.items[j][0] for j in cat.complements[last]]
        return (mates + comps + h.global_popularity(k))[:k]

    def repeat(cid: str, prefix: list[str] | None, k: int) -> list[str]:
        return list(reversed(prefix or []))[:1]

    report = evaluate(events, truth, collection)
    assert report.next_product["engine"] > 4 * report.next_product["popularity"]
    assert report.aims[2].met
    assert report.scores["engine"] == report.scores["category_popularity"]
    assert evaluate(events, truth, repeat).next_product["engine"] == 0.0


def test_evaluation_is_deterministic(small: tuple[SimConfig, Path, Path]) -> None:
    _, events, truth = small
    h = read_history(events)

    def engine(cid: str, prefix: list[str] | None, k: int) -> list[str]:
        return h.category_popularity(cid, k)

    a = evaluate(events, truth, engine).to_json()
    assert a == evaluate(events, truth, engine).to_json()
    assert format_report(evaluate(events, truth, engine, k=5)).count("@5") == 3


def test_oracle_beats_popularity(tmp_path: Path) -> None:
    """The latent structure is real: the truth's oracle list finds what customers buy in the
    holdout far more often than global popularity, and category popularity is in between."""
    cfg = SimConfig(customers=1200, days=60, holdout_days=14, seed=2)
    simulate_to_file(cfg, tmp_path / "events.jsonl", tmp_path / "truth.jsonl")
    h = read_history(tmp_path / "events.jsonl")
    report = evaluate(
        tmp_path / "events.jsonl",
        tmp_path / "truth.jsonl",
        lambda cid, prefix, k: h.global_popularity(k),
    )
    s = report.scores
    assert report.customers > 120
    assert s["oracle"].hit_rate > 1.7 * s["global_popularity"].hit_rate
    assert s["oracle"].ndcg > 1.7 * s["global_popularity"].ndcg
    assert s["global_popularity"].hit_rate < s["category_popularity"].hit_rate
    assert s["category_popularity"].hit_rate < s["oracle"].hit_rate
    assert s["oracle"].coverage > 5 * s["global_popularity"].coverage

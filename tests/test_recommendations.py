"""Recommendations: the product knowledge (decay, bounds, pickling, any order = the same state,
replay = live), the ranking and its filters, the catalogue loader, the HTTP endpoints for
customers, visitors and products against a real Redis, the CLI, and the NBA payload."""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from bytewax.testing import TestingSink, run_main
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.flow import build_flow
from dataflows.records import RawRecord
from dataflows.sinks import RedisSink
from dataflows.steps.products import BasketLogic
from decisions.recommend import (
    Inputs,
    RecoConfig,
    RecoConfigError,
    excluded,
    load_config,
    rank,
)
from features import popularity as popular
from features import products as pr
from features.catalog import parse_lines
from features.store import (
    CATALOG_VERSION_KEY,
    POPULAR_KEY,
    link_key,
    product_key,
)
from nextbest.commands.catalog import write_catalog
from nextbest.settings import Settings
from schemas.events import Event, Item
from serving.app import create_app
from tests.conftest import flow_config, nextbest_cli
from tests.test_arrival_order import BatchesSource

DAY = pr.DAY
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z (a Thursday: week bucket boundary)

# -- the product state --------------------------------------------------------------------------

Op = tuple[str, Any]

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("touch"),
            st.tuples(
                st.sampled_from(["product_view", "add_to_cart", "purchase"]),
                st.integers(0, 80 * DAY),
                st.sampled_from(["shoes", "bags", ""]),
                st.sampled_from([None, 9.5, 20.0]),
            ),
        ),
        st.tuples(
            st.just("pair"),
            st.tuples(
                st.sampled_from(pr.RELATIONS),
                st.sampled_from(["b", "c", "d", "e"]),
                st.sampled_from(["shoes", "bags"]),
                st.integers(0, 80 * DAY),
            ),
        ),
    ),
    max_size=60,
)


def apply(s: pr.ProductState, items: list[Op]) -> pr.ProductState:
    for kind, v in items:
        if kind == "touch":
            s.touch(*v)
        else:
            s.pair(*v)
    return s


@settings(max_examples=200, deadline=None)
@given(ops, st.randoms(use_true_random=False))
def test_a_product_state_does_not_depend_on_the_order_of_its_touches(
    items: list[Op], rnd: random.Random
) -> None:
    """Any arrival order (and so any batching, any number of processes) gives the same
    projection: counts in buckets, windows that forget the same buckets whatever the order."""
    shuffled = list(items)
    rnd.shuffle(shuffled)
    a = pr.project(apply(pr.ProductState("a"), items))
    b = pr.project(apply(pr.ProductState("a"), shuffled))
    assert a == b


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(-5, 5), st.integers(0, 3)),
                max_size=30), st.randoms(use_true_random=False))  # fmt: skip
def test_the_board_does_not_depend_on_the_order_of_its_notes(
    notes: list[tuple[str, float, int]], rnd: random.Random
) -> None:
    made = [popular.Note(p, "c" + str(t % 2), lp, max(0.0, lp), 1000 * t, t) for p, lp, t in notes]
    shuffled = list(made)
    rnd.shuffle(shuffled)
    a, b = popular.Board(), popular.Board()
    for n in made:
        a.note(n)
    for n in shuffled:
        b.note(n)
    # equal touches of one product are one and the same note in the stream (ties: the first)
    if len({(n.product_id, n.touches) for n in made}) == len(made):
        assert a.lists() == b.lists()


def test_weights_decay_with_their_half_life_and_old_weeks_are_forgotten() -> None:
    s = pr.ProductState("a")
    s.touch("product_view", T0, "shoes", 10.0)
    s.pair("view", "b", "shoes", T0)
    doc = pr.project(s)
    (_, w, _), = doc["neighbours"]["view"]  # fmt: skip
    # the week's middle is in the future of T0: not decayed yet, then halved per 7 days
    assert w == 1.0
    assert pr.decayed(w, "view", T0, T0 + 7 * DAY) == pytest.approx(0.5)
    assert pr.decayed(w, "buy", T0, T0 + 28 * DAY) == pytest.approx(0.5)
    assert pr.popularity(doc, T0 + 7 * DAY) == pytest.approx(0.5)
    # a co-occurrence more than WEEKS weeks older than the newest is forgotten
    s.pair("view", "c", "bags", T0 + pr.WEEKS * pr.WEEK)
    assert "b" not in s.relations["view"].weeks
    s.pair("view", "b", "shoes", T0)  # too old now: ignored, in any order
    assert "b" not in s.relations["view"].weeks
    # popularity: 28 day buckets and 48 hour buckets at most
    for d in range(100):
        s.touch("product_view", T0 + d * DAY, "shoes", None)
    assert len(s.days.counts) == pr.POP_DAYS and len(s.hours.counts) <= pr.POP_HOURS


def test_neighbours_are_bounded_and_the_projection_keeps_the_strongest() -> None:
    s = pr.ProductState("a")
    for i in range(pr.MAX_NEIGHBOURS + 25):
        for _ in range(1 + i % 3):
            s.pair("cart", f"n{i:05d}", "x", T0)
    rel = s.relations["cart"]
    refused = sum(1 + i % 3 for i in range(pr.MAX_NEIGHBOURS, pr.MAX_NEIGHBOURS + 25))
    assert len(rel.weeks) == pr.MAX_NEIGHBOURS and rel.refused == refused
    projected = pr.project(s)["neighbours"]["cart"]
    assert len(projected) == pr.TOP_K
    assert [w for _, w, _ in projected] == sorted((w for _, w, _ in projected), reverse=True)
    assert projected[0][1] == 3.0
    assert s.size() <= pr.POP_DAYS + pr.POP_HOURS + 3 * pr.MAX_NEIGHBOURS * pr.WEEKS
    # a session pairs a new product with the few seen just before it
    b = pr.Basket(T0)
    got = [b.add("view", p, "x") for p in "abcdef"]
    assert [o for o, _ in got[-1]] == ["b", "c", "d", "e"][-pr.PAIR_WINDOW :]


def test_states_pickle_and_go_on_alike() -> None:
    s = apply(pr.ProductState("a"), [("touch", ("product_view", T0, "shoes", 3.0)),
                                     ("pair", ("buy", "b", "bags", T0))])  # fmt: skip
    clone = pickle.loads(pickle.dumps(s))
    assert pr.project(clone) == pr.project(s)
    for x in (s, clone):
        x.pair("view", "c", "shoes", T0 + 3 * DAY)
        x.touch("add_to_cart", T0 + 3 * DAY, "shoes", 4.0)
    assert pr.project(clone) == pr.project(s)
    board = popular.Board()
    board.note(popular.note_of(pr.project(s)))
    assert pickle.loads(pickle.dumps(board)).lists() == board.lists()
    basket = pr.Basket(T0)
    basket.add("view", "a", "x")
    assert pickle.loads(pickle.dumps(basket)).add("view", "b", "y") == [("a", "x")]


def _ev(i: int, type_: str, ts: int, **kw: Any) -> Event:
    return Event(event_id=f"e{i}", type=type_, ts=ts, **kw)


def test_a_session_pairs_each_two_products_once_and_duplicates_count_once() -> None:
    logic = BasketLogic(None, flow_config())
    views = [_ev(i, "product_view", T0 + i, anonymous_id="d", session_id="s1", product_id=p,
                 category="x") for i, p in enumerate("abab")]  # fmt: skip
    out, _ = logic.on_batch([("event", e) for e in [*views, views[0]]])
    items = [item for _, (_, batch) in out for item in batch]
    pairs = [v for kind, v in items if kind == "pair"]
    touches = [v for kind, v in items if kind == "touch"]
    assert sorted((a, b) for _rel, a, b, _c, _ts in pairs) == [("a", "b"), ("b", "a")]
    assert len(touches) == 4  # the duplicate of e0 counts once
    order = _ev(
        9,
        "purchase",
        T0 + 99,
        customer_id="c",
        total=3.0,
        items=[Item(product_id="a", category="x"), Item(product_id="z", category="y")],
    )
    out, _ = logic.on_batch([("event", order)])
    items = [item for _, (_, batch) in out for item in batch]
    assert sorted(v[0] for kind, v in items if kind == "pair") == ["buy", "buy"]


# -- replay = live, batching, the flow -----------------------------------------------------------


def _product_keys(client: redis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for k in client.scan_iter(match="nb:{p*"):
        out[k] = client.get(k) if client.type(k) == b"string" else client.hgetall(k)
    out[POPULAR_KEY.encode()] = client.hgetall(POPULAR_KEY)
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from nextbest.simulator import SimConfig, simulate_to_file

    d = tmp_path_factory.mktemp("reco")
    out, truth = d / "h.jsonl", d / "t.jsonl"
    simulate_to_file(SimConfig(customers=250, days=24, holdout_days=4, seed=13), out, truth)
    return out, truth


def _run_batches(lines: list[bytes], cuts: list[int], url: str) -> dict[bytes, Any]:
    records = [RawRecord(line, f"file:h.jsonl:{i + 1}") for i, line in enumerate(lines)]
    batches, start = [], 0
    for cut in [*sorted(set(cuts)), len(records)]:
        if start < cut <= len(records):
            batches.append(records[start:cut])
            start = cut
    client = redis.Redis.from_url(url)
    client.flushdb()
    cfg = flow_config(models=False)
    run_main(build_flow(BatchesSource(batches), RedisSink(url), TestingSink([]), config=cfg))
    got = _product_keys(client)
    client.close()
    return got


def test_product_knowledge_does_not_depend_on_batching(
    history: tuple[Path, Path], redis_url: str
) -> None:
    lines = history[0].read_bytes().splitlines()
    url = f"{redis_url}?db=7"
    whole = _run_batches(lines, [], url)
    assert len(whole) > 100 and whole[POPULAR_KEY.encode()][b"all"] != b"[]"
    rnd = random.Random(4)
    cut = _run_batches(lines, rnd.sample(range(1, len(lines)), 300), url)
    assert cut == whole
    redis.Redis.from_url(url).flushdb()


def test_replay_equals_live_through_kafka(
    history: tuple[Path, Path], kafka_brokers: str, redis_url: str, tmp_path: Path
) -> None:
    """The same history replayed from its file and consumed live from a broker (one partition
    per topic, as a shop's single stream) gives the same product knowledge, key for key."""
    import subprocess
    import sys
    import time

    from nextbest.runtime import free_port
    from tests.conftest import REPO, metric_sum

    events = history[0]
    env = {"NEXTBEST_REDIS_URL": f"{redis_url}?db=5", "NEXTBEST_HOME": str(tmp_path / "h"),
           "NEXTBEST_METRICS_PORT": "0"}  # fmt: skip
    client = redis.Redis.from_url(f"{redis_url}?db=5")
    client.flushdb()
    nextbest_cli("replay", "--write-interval", "0", str(events), env=env)
    replayed = _product_keys(client)
    client.flushdb()
    topics = {
        "NEXTBEST_TOPIC_CLICKSTREAM": "r-click",
        "NEXTBEST_TOPIC_TRANSACTIONS": "r-tx",
        "NEXTBEST_TOPIC_DEAD_LETTER": "r-dead",
        "NEXTBEST_TOPIC_DECISIONS": "r-dec",
        "NEXTBEST_TOPIC_PARTITIONS": "1",
        "NEXTBEST_KAFKA_BROKERS": kafka_brokers,
    }
    live_env = {**env, **topics}
    nextbest_cli("simulate", "--customers", "250", "--days", "24", "--holdout-days", "4",
                 "--seed", "13", "--kafka", env=live_env)  # fmt: skip
    port = free_port()
    full = {k: v for k, v in __import__("os").environ.items() if not k.startswith("NEXTBEST_")}
    full.update(live_env, NEXTBEST_METRICS_PORT=str(port))
    runner = subprocess.Popen([sys.executable, "-m", "nextbest", "run", "--quiet"],
                              env=full, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        n = len(events.read_bytes().splitlines())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and metric_sum(port, "nextbest_events_read_total") < n:
            time.sleep(0.3)
        assert metric_sum(port, "nextbest_events_read_total") == n
        time.sleep(1.5)  # the last coalesced writes (the write interval)
    finally:
        runner.terminate()
        _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err.decode()[-2000:]
    live = _product_keys(client)
    client.flushdb()
    assert live.keys() == replayed.keys()
    assert live == replayed


# -- ranking -------------------------------------------------------------------------------------


def _inputs(**kw: Any) -> Inputs:
    base: dict[str, Any] = {
        "recent": [(T0, "v", "a", "shoes")],
        "neighbours": {
            "a": ({"view": [("b", 5.0, "shoes"), ("c", 3.0, "shoes"), ("d", 1.0, "bags")]}, T0),
            "x": ({"buy": [("y", 2.0, "socks")]}, T0),
        },
        "popular": [("p1", 1.0, "toys"), ("p2", 0.5, "toys")],
        "trending": [("t1", 4.0, "toys")],
        "by_category": {"shoes": [("s1", 1.0, "shoes"), ("b", 0.4, "shoes")]},
        "interests": {"shoes": 3.0},
        "as_of": T0,
    }
    base.update(kw)
    return Inputs(**base)


def test_the_last_click_leads_and_each_item_says_why() -> None:
    items = rank(_inputs(), RecoConfig(), 5)
    assert items[0].product_id == "b" and items[0].reason == "viewed together with a"
    assert items[0].sources == ["item_to_item", "category"]
    # another click: the answer follows it at once
    moved = rank(_inputs(recent=[(T0, "v", "a", "shoes"), (T0 + 1, "v", "x", "socks")],
                         interests={"shoes": 3.0, "socks": 3.0}), RecoConfig(), 5)  # fmt: skip
    assert moved[0].product_id == "y" and moved[0].reason == "bought together with x"
    # the page's product seeds item-to-item first, for anyone
    anon = rank(_inputs(recent=[], interests={}, personal=False, context_product="x"),
                RecoConfig(), 3)  # fmt: skip
    assert anon[0].product_id == "y" and "x" not in {i.product_id for i in anon}


def test_filters_exclude_bought_cart_out_of_stock_and_the_pages_product() -> None:
    cfg = RecoConfig()
    inp = _inputs(cart={"c": 1}, bought={"s1": T0 - DAY, "p2": T0 - 30 * DAY},
                  unavailable=frozenset({"d"}), context_product="p1")  # fmt: skip
    got = {i.product_id for i in rank(inp, cfg, 20)}
    assert got.isdisjoint({"a", "c", "s1", "d", "p1"}) and {"b", "p2", "t1"} <= got
    # bought outside 7 days; the last product viewed more than 30 minutes ago
    assert excluded(_inputs(bought={"s1": T0 - 8 * DAY}), cfg) == {"a"}
    assert excluded(_inputs(bought={"s1": T0 - 8 * DAY}, as_of=T0 + 31 * 60_000), cfg) == set()
    # only a category
    only = rank(_inputs(category="toys", by_category={"toys": [("p2", 1.0, "toys")]}), cfg, 20)
    assert only and {i.category for i in only} == {"toys"}


def test_diversity_caps_a_category_unless_nothing_else_is_left() -> None:
    many = [(f"s{i}", 1.0 - i / 100, "shoes") for i in range(12)]
    inp = _inputs(by_category={"shoes": many}, popular=[("p1", 1.0, "toys")], trending=[])
    got = [i.category for i in rank(inp, RecoConfig(max_per_category=3), 5)]
    assert got.count("shoes") == 3 and {"bags", "toys"} <= set(got)
    # 8 wanted, only 2 of other categories: 3 + 3 more shoes after them
    got = [i.category for i in rank(inp, RecoConfig(max_per_category=3), 8)]
    assert got.count("shoes") == 6 and set(got[5:]) == {"shoes"}


def test_recommendations_config_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    assert load_config().max_per_category == 5
    for text, line, field in [
        ("weights:\n  item_to_item: -1\n", 2, "weights.item_to_item"),
        ("weights:\n  colab: 1\n", 2, "weights.colab"),
        ("seeds: 3\nmax_per_category: 0\n", 2, "max_per_category"),
        ("sedes: 3\n", 1, "sedes"),
    ]:
        p = tmp_path / "r.yaml"
        p.write_text(text)
        with pytest.raises(RecoConfigError) as info:
            load_config(p)
        assert (info.value.line, info.value.field) == (line, field)
        assert str(p) in str(info.value)


# -- the catalogue -------------------------------------------------------------------------------


def test_catalogue_loader_rejects_bad_rows_with_line_and_reason() -> None:
    jsonl = [
        '{"product_id": "p-1", "name": "Boots", "category": "shoes", "price": 49.9}',
        "{not json",
        '{"product_id": "p-2", "price": "cheap"}',
        '{"name": "no id"}',
        '{"product_id": "p-1", "name": "again"}',
        '{"product_id": "p-3", "in_stock": "maybe"}',
        '["a list"]',
        "",
        '{"product_id": "p-4", "in_stock": false, "url": "/p/4"}',
    ]
    items, errors = parse_lines(jsonl, "jsonl")
    assert [i.product_id for i in items] == ["p-1", "p-4"] and not items[1].in_stock
    assert [(e.line, e.reason) for e in errors] == [
        (2, "invalid_json"), (3, "bad_price"), (4, "missing_product_id"),
        (5, "duplicate_product_id"), (6, "bad_in_stock"), (7, "not_an_object"),
    ]  # fmt: skip
    csv_items, csv_errors = parse_lines(["id,name", "p-1,x"], "csv")
    assert not csv_items and csv_errors[0].reason == "no_header"
    _, short = parse_lines(["product_id,name", "p-1"], "csv")
    assert short[0].reason == "bad_row" and short[0].line == 2


def test_catalog_load_cli_loads_the_good_rows(tmp_path: Path, redis_url: str) -> None:
    f = tmp_path / "catalog.csv"
    f.write_text("product_id,name,category,price,in_stock,url\n"
                 "p-1,Boots,shoes,49.90,yes,https://shop.example/p-1\n"
                 "p-2,Hat,hats,-3,yes,\n"
                 "p-3,Scarf,hats,12,no,\n")  # fmt: skip
    env = {"NEXTBEST_REDIS_URL": f"{redis_url}?db=6", "NEXTBEST_HOME": str(tmp_path / "h")}
    got = nextbest_cli("catalog", "load", str(f), "--json", env=env)
    summary = json.loads(got.stdout)
    assert (summary["loaded"], summary["rejected"], summary["out_of_stock"]) == (2, 1, 1)
    assert f"{f}:3: bad_price" in got.stderr
    client = redis.Redis.from_url(f"{redis_url}?db=6")
    assert client.get(CATALOG_VERSION_KEY) == summary["version"].encode()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    assert nextbest_cli("catalog", "load", str(bad), env=env, check=False).returncode == 1
    client.flushdb()


# -- the endpoints -------------------------------------------------------------------------------


def _product(pid: str, category: str, neighbours: dict[str, list[list[Any]]]) -> bytes:
    return orjson.dumps({"id": pid, "category": category, "price": 10.0, "first_seen": T0,
                         "last_seen": T0, "touches": 5, "popularity": 3.0, "trending": 0.0,
                         "lpop": 5.0, "neighbours": neighbours})  # fmt: skip


def _profile_fields(key: str, recent: list[list[Any]], interest: str) -> dict[str, str]:
    return {"v": "2", "key": key, "lt": str(T0), "ft": str(T0), "ne": "3",
            "rp": json.dumps(recent), f"i:{interest}": "3.0"}  # fmt: skip


@pytest.fixture
def api(redis_url: str, redis_client: redis.Redis) -> Iterator[TestClient]:
    c = redis_client
    c.set(product_key("a"), _product("a", "shoes", {"view": [["b", 4.0, "shoes"],
                                                              ["c", 2.0, "shoes"]]}))  # fmt: skip
    c.set(product_key("x"), _product("x", "socks", {"buy": [["y", 2.0, "socks"]]}))
    c.hset(POPULAR_KEY, mapping={
        "all": orjson.dumps([["p1", 9.0, "toys"], ["p2", 8.0, "toys"], ["b", 7.0, "shoes"]]),
        "trend": orjson.dumps([["t1", 3.0, "toys", T0]]),
        "c:shoes": orjson.dumps([["s1", 6.0, "shoes"], ["b", 5.0, "shoes"]]),
    })  # fmt: skip
    c.hset("nb:{c:42}:profile", mapping=_profile_fields("c:42", [[T0, "v", "a", "shoes"]], "shoes"))
    c.hset(
        "nb:{a:dev}:profile", mapping=_profile_fields("a:dev", [[T0, "v", "x", "socks"]], "socks")
    )
    c.set(link_key("dev-linked"), "42")
    app = create_app(Settings.from_env({}), redis_url)
    with TestClient(app) as client:
        yield client


AS_OF = "2026-01-01T01:00:00Z"


def test_customer_visitor_and_similar_endpoints(api: TestClient, redis_client: redis.Redis) -> None:
    r = api.get("/v1/customers/42/recommendations", params={"n": 3, "as_of": AS_OF})
    assert r.status_code == 200
    body = r.json()
    assert body["personal"] and body["seeds"] == ["a"]
    assert [i["product_id"] for i in body["items"]] == ["b", "s1", "c"]
    assert body["items"][0]["reason"] == "viewed together with a"
    assert body["items"][1]["reason"] == "popular in shoes this week"
    assert body["freshness"]["newest_event"] == "2026-01-01T00:00:00Z"
    # a visitor: the anonymous profile, or the linked customer's
    anon = api.get("/v1/visitors/dev/recommendations", params={"as_of": AS_OF}).json()
    assert anon["items"][0]["product_id"] == "y" and anon["customer_id"] is None
    linked = api.get("/v1/visitors/dev-linked/recommendations", params={"as_of": AS_OF}).json()
    assert linked["customer_id"] == "42" and linked["items"][0]["product_id"] == "b"
    # unknown people get the non-personal list, not a 404
    nobody = api.get("/v1/customers/nobody/recommendations", params={"as_of": AS_OF}).json()
    assert not nobody["personal"] and {"t1", "p1"} <= {i["product_id"] for i in nobody["items"]}
    # the page's product
    ctx = api.get("/v1/customers/nobody/recommendations",
                  params={"context_product": "x", "as_of": AS_OF}).json()  # fmt: skip
    assert ctx["items"][0]["product_id"] == "y"
    # similar products, known or not
    sim = api.get("/v1/products/a/similar", params={"n": 4, "as_of": AS_OF}).json()
    assert sim["known"] and [i["product_id"] for i in sim["items"]][:2] == ["b", "c"]
    assert sim["personal"] is False
    assert "a" not in {i["product_id"] for i in sim["items"]}
    new = api.get("/v1/products/brand-new/similar", params={"as_of": AS_OF}).json()
    assert not new["known"] and new["items"]
    # the catalogue: out of stock is never recommended, names and URLs are attached
    from features.catalog import CatalogItem

    boots = CatalogItem("b", "Blue boots", "shoes", 59.0, False)
    write_catalog(redis_client, [boots, CatalogItem("c", "Clogs", "shoes", 30.0, True, "/p/c")])
    # (the new catalogue is loaded in the background when an answer sees its version)
    deadline = time.monotonic() + 10
    while True:
        after = api.get("/v1/customers/42/recommendations", params={"as_of": AS_OF}).json()
        if after["freshness"]["catalog_version"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    items = {i["product_id"]: i for i in after["items"]}
    assert "b" not in items and items["c"]["name"] == "Clogs" and items["c"]["url"] == "/p/c"
    # metrics: bounded labels
    text = api.get("/metrics").text
    assert 'nextbest_recommendations_total{endpoint="customer",outcome="ok"}' in text
    assert 'nextbest_recommendation_candidates_total{source="item_to_item"}' in text
    assert "42" not in [line.split("{")[0] for line in text.splitlines()]


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/v1/customers/42/recommendations", {"n": 0}, "validation_error"),
        ("/v1/customers/42/recommendations", {"n": 500}, "validation_error"),
        ("/v1/customers/42/recommendations", {"as_of": "soon"}, "bad_as_of"),
        ("/v1/products/a/similar", {"n": "x"}, "validation_error"),
        ("/v1/customers/42/recommendations", {"context_product": "p" * 300}, "validation_error"),
    ],
)
def test_bad_requests_get_4xx_with_a_reason(
    api: TestClient, path: str, params: dict[str, Any], error: str
) -> None:
    r = api.get(path, params=params)
    assert 400 <= r.status_code < 500 and r.json()["error"] == error


def test_redis_away_gives_an_empty_degraded_answer_not_a_500(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}), f"unix://{tmp_path}/nothing.sock")
    with TestClient(app) as client:
        r = client.get("/v1/customers/42/recommendations")
        assert r.status_code == 200
        assert r.json()["degraded"] and r.json()["reason"] == "redis_unavailable"
        assert client.get("/v1/products/a/similar").json()["degraded"]


def test_the_recommended_products_action_carries_the_products(
    api: TestClient,
) -> None:
    """The shipped catalogue's web fallback is the recommended-products slot: its payload holds
    the products of the recommendations endpoint."""
    r = api.get("/v1/customers/42/next-best-action", params={"n": 20, "as_of": AS_OF}).json()
    slot = next(a for a in r["actions"] if a["id"] == "recommended_products")
    recs = api.get("/v1/customers/42/recommendations", params={"n": 4, "as_of": AS_OF}).json()
    assert [p["product_id"] for p in slot["payload"]["products"]] == [
        i["product_id"] for i in recs["items"]
    ]
    assert slot["payload"]["products"][0] == {"product_id": "b",
                                              "reason": "viewed together with a"}  # fmt: skip
    assert slot["payload"]["slot"] == "recommendations"


# -- the CLI, end to end on a replayed history -------------------------------------------------


def test_recommend_and_evaluate_recs_cli(history: tuple[Path, Path], tmp_path: Path) -> None:
    events, truth = history
    env = {"NEXTBEST_HOME": str(tmp_path / "home")}
    nextbest_cli("replay", "--no-models", str(events), env=env)
    cid = next(
        d["customer_id"]
        for d in map(orjson.loads, reversed(events.read_bytes().splitlines()))
        if d.get("type") == "product_view" and d.get("customer_id")
    )
    got = json.loads(nextbest_cli("recommend", cid, "-n", "5", env=env).stdout)
    assert got["personal"] and 0 < len(got["items"]) <= 5
    assert all(i["reason"] and i["sources"] for i in got["items"])
    similar = json.loads(nextbest_cli("recommend", "--similar", got["seeds"][0], env=env).stdout)
    assert similar["known"] and similar["items"]
    bad = nextbest_cli("recommend", cid, "--similar", "p", env=env, check=False)
    assert bad.returncode == 2
    args = ("evaluate-recs", str(events), "--truth", str(truth), "--json")
    report = json.loads(nextbest_cli(*args, env=env, timeout=300).stdout)
    scores = report["scores"]
    assert report["customers"] > 0 and report["prefixes"] > 0
    # the engine is evaluated, not a baseline in disguise: it reacts to the session
    assert report["next_product"]["engine"] > 1.5 * report["next_product"]["popularity"]
    assert scores["engine"]["hit_rate"] > 0
    assert "hit rate vs oracle" in report["table"]


def test_recommendations_config_is_validated_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text(
        textwrap.dedent("""\
        weights:
          popular: lots
    """)
    )
    env = {"NEXTBEST_HOME": str(tmp_path / "home"), "NEXTBEST_RECOMMENDATIONS": str(bad)}
    got = nextbest_cli("recommend", "42", env=env, check=False)
    assert got.returncode == 2 and f"{bad}:2" in got.stderr and "weights.popular" in got.stderr
    with pytest.raises(RecoConfigError):
        create_app(replace(Settings.from_env({}), recommendations=str(bad)), "redis://x")


def test_recommender_reads_stay_in_two_round_trips(api: TestClient, redis_url: str) -> None:
    """One round trip for the profile, the lists and the catalogue version, one for the seeds'
    knowledge and the category lists (a linked visitor: the link first)."""
    import redis.asyncio as aioredis

    from serving.reco import Recommender

    client = aioredis.Redis.from_url(redis_url)
    calls: list[int] = []
    real = client.pipeline

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    client.pipeline = counting  # type: ignore[method-assign]
    rec = Recommender(RecoConfig(), client)

    async def go() -> dict[str, Any]:
        await rec.catalog.refresh(client, None)
        body = await rec.recommend(T0, 5, customer_id="42")
        await client.aclose()
        return body

    body = asyncio.run(go())
    assert body["items"] and len(calls) == 2

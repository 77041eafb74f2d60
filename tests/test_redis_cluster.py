"""Redis Cluster, end to end: a real cluster of three masters (``tests/redis_cluster.py``: the
slots assigned here, the nodes joined here) and, beside it, a database of the session's single
Redis. The same simulated history (a catalogue loaded first, an erasure request in the file) is
replayed into both through the CLI, with ``NEXTBEST_REDIS_CLUSTER=1`` for the cluster; then the
two must hold exactly the same keys and values, and the CLI (``profile``, ``export``,
``segments``, ``recommend``, ``decide``) and the HTTP API (profiles, next best action,
recommendations, segments, catalogue import, erasure requests) must answer the same against
both, never degraded. A cross-slot command anywhere on these paths fails the test: the cluster
answers it with a ``CROSSSLOT`` error (and the cluster client refuses some itself).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from features.redis_conn import cluster_url, connect, is_cluster
from nextbest.runtime import ensure_topics
from nextbest.settings import Settings
from schemas.erasure import ErasureRequest, encode_request, status_key
from schemas.events import format_ts, parse_as_of
from serving.app import create_app
from tests.chaos import consume_all, differences, dump
from tests.conftest import REPO
from tests.redis_cluster import Cluster, running_cluster

pytestmark = pytest.mark.slow

DB = 8  # the single Redis's database for this module
SALT = "redis-cluster-test-salt-0123"
ERASED_RID = "c1" * 16
#: Keys whose values depend on the wall clock or a random draw (compared otherwise).
VOLATILE = (b"nb:{catalog}:version", b"nb:{erasure:")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three masters, started and joined here, stopped at the end of the module."""
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as c:
        yield c


@dataclass
class History:
    """The replayed history and what the tests ask about."""

    end_ms: int
    customers: list[str]  # some customers with a profile (buyers first)
    devices: list[str]  # some devices: linked and anonymous
    erased: str  # the customer erased by the request in the file
    erased_devices: tuple[str, ...]
    products: list[str]  # some products in the catalogue


@dataclass
class Stores:
    """The two stores after the replay: env of the CLI for each, clients, the history."""

    single_env: dict[str, str]
    cluster_env: dict[str, str]
    single: redis.Redis
    cluster: redis.Redis
    history: History
    root: Path


def _write_history(root: Path) -> History:
    from nextbest.simulator import SimConfig, generate

    lines = list(generate(SimConfig(customers=300, days=30, seed=11)))
    docs = [orjson.loads(line) for line in lines]
    end = max(parse_as_of(str(d["ts"])) or 0 for d in docs)
    buyers = sorted({str(d["customer_id"]) for d in docs if d["type"] == "purchase"})
    logins: dict[str, set[str]] = {}
    for d in docs:
        if d.get("customer_id") and d.get("anonymous_id"):
            logins.setdefault(str(d["customer_id"]), set()).add(str(d["anonymous_id"]))
    erased = next(c for c in buyers if c in logins)
    anonymous = sorted({str(d["anonymous_id"]) for d in docs if d.get("anonymous_id")})
    request = ErasureRequest(ERASED_RID, erased, tuple(sorted(logins[erased])), (), end + 60_000)
    (root / "history.jsonl").write_bytes(b"\n".join([*lines, encode_request(request)]) + b"\n")
    products: dict[str, tuple[str, float]] = {}
    for d in docs:
        if d.get("product_id") and d.get("category") and d.get("price"):
            products.setdefault(str(d["product_id"]), (str(d["category"]), float(d["price"])))
    with (root / "catalog.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "name", "category", "price", "in_stock", "url"])
        for i, (pid, (cat, price)) in enumerate(sorted(products.items())):
            w.writerow([pid, f"Product {pid}", cat, price, "no" if i % 7 == 0 else "yes",
                        f"https://shop.example/{pid}"])  # fmt: skip
    linked = sorted(d for c, ds in logins.items() if c != erased for d in ds)
    customers = [c for c in buyers if c != erased][:6]
    devices = [*linked[:3], *anonymous[:3], "unknown-device"]
    return History(end, [*customers, "nobody-at-all"], devices, erased, request.anonymous_ids,
                   sorted(products)[:3])  # fmt: skip


def _env(home: Path, url: str, cluster: bool) -> dict[str, str]:
    env = {"NEXTBEST_HOME": str(home), "NEXTBEST_REDIS_URL": url, "NEXTBEST_METRICS_PORT": "0",
           "NEXTBEST_LOG_LEVEL": "WARNING", "NEXTBEST_IDENTITY_SALT": SALT}  # fmt: skip
    if cluster:
        env["NEXTBEST_REDIS_CLUSTER"] = "1"
    return env


def _cli(stores: Stores, *commands: tuple[str, ...]) -> list[tuple[str, str]]:
    """Run each ``nextbest COMMAND`` against the single Redis and against the cluster, all at
    the same time; their stdouts, ``(single, cluster)`` per command (each must exit 0)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    procs = [
        (args, where, subprocess.Popen(
            [sys.executable, "-m", "nextbest", *args], env={**base, **env}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO))
        for args in commands
        for where, env in (("single", stores.single_env), ("cluster", stores.cluster_env))
    ]  # fmt: skip
    outs = []
    for args, where, proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"nextbest {' '.join(args)} ({where}): {err}"
        outs.append(out)
    return list(zip(outs[0::2], outs[1::2], strict=True))


def _in_process(
    stores: Stores,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *commands: tuple[str, ...],
) -> list[tuple[str, str]]:
    """Run each ``nextbest COMMAND`` with :func:`nextbest.cli.main` in this process against the
    single Redis, then against the cluster; their stdouts, ``(single, cluster)`` per command."""
    from nextbest.cli import main

    for var in [v for v in os.environ if v.startswith("NEXTBEST_")]:
        monkeypatch.delenv(var)
    out = []
    for args in commands:
        got = []
        for env in (stores.single_env, stores.cluster_env):
            with monkeypatch.context() as m:
                for k, v in env.items():
                    m.setenv(k, v)
                capsys.readouterr()
                code = main(list(args))
                text, err = capsys.readouterr()
                assert code == 0, f"nextbest {' '.join(args)} ({env}): {err}"
                got.append(text)
        out.append((got[0], got[1]))
    return out


def _comparable(client: redis.Redis) -> dict[bytes, Any]:
    return {k: v for k, v in dump(client).items() if not k.startswith(VOLATILE)}


@pytest.fixture(scope="module")
def stores(
    cluster: Cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stores]:
    """The catalogue loaded and the history replayed into both stores."""
    root = tmp_path_factory.mktemp("cluster-replay")
    history = _write_history(root)
    single_url = f"{redis_url}?db={DB}"
    single = connect(single_url)
    single.flushdb()
    clustered = connect(cluster_url(cluster.url))
    assert is_cluster(clustered)
    s = Stores(_env(root / "home-single", single_url, False),
               _env(root / "home-cluster", cluster.url, True), single, clustered, history,
               root)  # fmt: skip
    _cli(s, ("catalog", "load", str(root / "catalog.csv"), "--json"))
    [(a, b)] = _cli(s, ("replay", str(root / "history.jsonl"), "--json"))
    ra, rb = json.loads(a), json.loads(b)
    assert ra["read"] == rb["read"] > 10_000 and ra["accepted"] == rb["accepted"]
    try:
        yield s
    finally:
        single.flushdb()
        single.close()
        clustered.close()


def test_the_cluster_is_really_a_cluster(cluster: Cluster) -> None:
    """Three masters share the slots, and a command on keys of two slots is refused."""
    client = connect(cluster_url(cluster.url))
    try:
        assert len(client.get_primaries()) == 3  # type: ignore[attr-defined]
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):
            cluster.node(0).execute_command("DEL", "nb:{c:a}:profile", "nb:{c:b}:profile")
    finally:
        client.close()


def test_a_replay_writes_the_same_keys_and_values_into_the_cluster(stores: Stores) -> None:
    single, clustered = _comparable(stores.single), _comparable(stores.cluster)
    assert len(single) > 1000
    assert differences(single, clustered) == []
    assert single == clustered
    # the timing-dependent publications too: the replay publishes at its end
    published = sorted(k for k in stores.single.scan_iter(match="nb:{model:*", count=1000))
    assert published == sorted(stores.cluster.scan_iter(match="nb:{model:*", count=1000))
    for key in [b"nb:rfm:boundaries", *published]:
        assert stores.single.get(key) == stores.cluster.get(key) is not None, key
    # spread over every master
    assert all(node.dbsize() > 100 for node in _masters(stores.cluster))
    # the erasure request in the file was applied on both
    h = stores.history
    for client in (stores.single, stores.cluster):
        status = orjson.loads(client.get(status_key(ERASED_RID)) or b"{}")
        assert status["status"] == "done"
        assert not [k for k in dump(client) if h.erased.encode() in k]
        assert not [k for d in h.erased_devices for k in dump(client) if d.encode() in k]


def _masters(client: redis.Redis) -> list[redis.Redis]:
    from features.redis_conn import primaries

    return primaries(client)


def _lines(text: str) -> list[str]:
    return sorted(text.splitlines())


def test_the_cli_answers_the_same_against_the_cluster(
    stores: Stores, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reading commands run in this process (``nextbest.cli.main``: the same parsing,
    settings from the environment and command; no interpreter start per command), the
    rebuild as a subprocess. Decision ids (the seed of exploration) are the same on both:
    a decision that explored lists the explored action first, and ``-n`` cuts the list."""
    monkeypatch.setattr("serving.nba.uuid", SimpleNamespace(uuid4=lambda: uuid.UUID(int=7)))
    h = stores.history
    as_of = format_ts(h.end_ms + 3_600_000)
    cid = h.customers[0]
    sizes = {k.decode()[len("nb:{seg:") : -len("}:members")]: stores.single.zcard(k)
             for k in stores.single.scan_iter(match="nb:{seg:*}:members")}  # fmt: skip
    name = max(sizes, key=lambda n: sizes[n])
    assert sizes[name] > 0
    got = _in_process(
        stores,
        capsys,
        monkeypatch,
        ("profile", cid, "--as-of", as_of),
        ("profile", "--anonymous-id", h.devices[0], "--as-of", as_of),
        ("recommend", cid, "--as-of", as_of, "-n", "5"),
        ("decide", cid, "--as-of", as_of),
        ("export", "--as-of", as_of, "--include-anonymous"),
        ("segments", "--json", "--as-of", as_of),
        ("segments", "members", name, "--json", "--limit", "20"),
        ("export", "--segment", name, "--as-of", as_of, "--format", "csv"),
    )
    (profile, visitor, reco, decision, export, summary, members, targeted) = got
    assert profile[0] == profile[1] and cid in profile[0]
    assert visitor[0] == visitor[1]
    ra, rb = (json.loads(x) for x in reco)
    assert ra["freshness"].pop("catalog_version") and rb["freshness"].pop("catalog_version")
    assert ra == rb and ra["degraded"] is False and ra["items"]
    da, db = (json.loads(x) for x in decision)
    assert da == db and da["degraded"] is False and da["actions"]
    assert _lines(export[0]) == _lines(export[1]) and len(_lines(export[0])) > 250
    assert summary[0] == summary[1]
    listed = {r["name"]: r["members"] for r in json.loads(summary[0])["segments"]}
    assert listed[name] == sizes[name]
    assert members[0] == members[1] and json.loads(members[0])["members"]
    assert targeted[0] == targeted[1] and len(targeted[0].splitlines()) == sizes[name] + 1
    # a rebuild reads every profile and rewrites memberships and the index: the same on both
    later = format_ts(h.end_ms + 40 * 86_400_000)
    [(a, b)] = _cli(stores, ("segments", "rebuild", name, "--as-of", later, "--json"))
    ra, rb = json.loads(a), json.loads(b)
    ra.pop("output"), rb.pop("output")
    assert ra == rb and ra["profiles"] > 100
    assert differences(_comparable(stores.single), _comparable(stores.cluster)) == []


@pytest.fixture
def apis(
    stores: Stores, cluster: Cluster, redis_url: str, kafka_brokers: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[TestClient, TestClient]]:  # fmt: skip
    """The API on the single Redis and on the cluster (``NEXTBEST_REDIS_CLUSTER=1``), each
    writing to its own topics; decision ids (the seed of exploration) are the same on both."""
    monkeypatch.setattr("serving.nba.uuid", SimpleNamespace(uuid4=lambda: uuid.UUID(int=7)))
    ensure_topics(kafka_brokers, ["rc-single-tx", "rc-single-click", "rc-cluster-tx",
                                  "rc-cluster-click"], 1)  # fmt: skip
    base = Settings.from_env({"NEXTBEST_IDENTITY_SALT": SALT})
    single_app = create_app(replace(base, topic_transactions="rc-single-tx",
                                    topic_clickstream="rc-single-click"),
                            f"{redis_url}?db={DB}", kafka_brokers)  # fmt: skip
    cluster_settings = replace(base, redis_cluster=True, topic_transactions="rc-cluster-tx",
                               topic_clickstream="rc-cluster-click")  # fmt: skip
    cluster_app = create_app(cluster_settings, cluster.url, kafka_brokers)
    with TestClient(single_app) as a, TestClient(cluster_app) as b:
        assert is_cluster(b.app.state.redis)  # type: ignore[attr-defined]
        for api in (a, b):  # the published models loaded now (not by the 2-s poll)
            state = api.app.state  # type: ignore[attr-defined]
            api.portal.call(state.models.arefresh, state.redis)  # type: ignore[union-attr]
        yield a, b


def _same(apis: tuple[TestClient, TestClient], method: str, path: str, **kw: Any) -> Any:
    """The answer of both apps (the same status and body); the body."""
    ra, rb = (api.request(method, path, **kw) for api in apis)
    assert ra.status_code == rb.status_code, (path, ra.text, rb.text)
    assert ra.json() == rb.json(), path
    body = ra.json()
    if isinstance(body, dict) and "degraded" in body:
        assert body["degraded"] is False, (path, body)
    return body


def test_the_api_answers_the_same_against_the_cluster(
    stores: Stores, apis: tuple[TestClient, TestClient], kafka_brokers: str
) -> None:
    h = stores.history
    q = {"as_of": format_ts(h.end_ms + 3_600_000)}
    for api in apis:
        assert api.get("/readyz").json()["checks"]["redis"] == "ok"
    # the catalogue, read in the background when an answer sees its version
    for api in apis:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = api.get(f"/v1/customers/{h.customers[0]}/recommendations", params=q).json()
            if r["freshness"]["catalog_version"]:
                break
            time.sleep(0.02)
    for cid in h.customers:
        profile = _same(apis, "GET", f"/v1/customers/{cid}/profile", params=q)
        if cid != "nobody-at-all":
            assert profile["customer_id"] == cid
        _same(apis, "GET", f"/v1/customers/{cid}/next-best-action", params=q)
        _same(apis, "GET", f"/v1/customers/{cid}/next-best-action",
              params={**q, "channel": "email"})  # fmt: skip
        reco = _same_reco(apis, f"/v1/customers/{cid}/recommendations", q)
        assert reco["items"] or cid == "nobody-at-all"
    for dev in h.devices:
        _same(apis, "GET", f"/v1/visitors/{dev}/profile", params=q)
        _same(apis, "GET", f"/v1/visitors/{dev}/next-best-action", params=q)
        _same_reco(apis, f"/v1/visitors/{dev}/recommendations", q)
    for pid in h.products:
        _same_reco(apis, f"/v1/products/{pid}/similar", q)
    segments = _same(apis, "GET", "/v1/segments", params=q)
    for row in segments["segments"]:
        _same(apis, "GET", f"/v1/segments/{row['name']}/members", params={"limit": 50})
    gauges = [sorted(line for line in api.get("/metrics").text.splitlines()
                     if line.startswith("nextbest_segment_members{")) for api in apis]  # fmt: skip
    assert gauges[0] == gauges[1] and len(gauges[0]) == len(segments["segments"])
    assert _same(apis, "GET", f"/v1/customers/{h.erased}/profile", params=q)["error"]
    # the decisions counted their serves (a Lua script on the customer's contacts hash)
    assert differences(_comparable(stores.single), _comparable(stores.cluster)) == []
    assert any(k.endswith(b":contacts") for k in _comparable(stores.cluster))

    # a catalogue import over HTTP (a temporary key renamed over the catalogue, its slot's)
    rows = "product_id,name,category,price,in_stock\nz-1,Zed,misc,3.5,yes\n"
    for api in apis:
        r = api.post("/v1/catalog", content=rows, headers={"Content-Type": "text/csv"})
        assert r.status_code == 200 and r.json()["loaded"] == 1, r.text
    assert stores.cluster.hkeys("nb:{catalog}:items") == [b"z-1"]
    assert differences(_comparable(stores.single), _comparable(stores.cluster)) == []

    # an erasure request: the customer's keys read (its slot), a pending status, the request
    # on the topic for `run` (which applies it as the replay applied the one in the file)
    who = h.customers[1]
    requests = []
    for api, topic in zip(apis, ("rc-single-tx", "rc-cluster-tx"), strict=True):
        r = api.delete(f"/v1/customers/{who}")
        assert r.status_code == 202, r.text
        rid = r.json()["request_id"]
        assert api.get(f"/v1/erasures/{rid}").json()["status"] == "pending"
        req = orjson.loads(consume_all(kafka_brokers, topic, quiet=1)[-1])
        assert req["type"] == "erasure" and req["request_id"] == rid
        requests.append({k: v for k, v in req.items() if k not in ("request_id", "ts")})
    assert requests[0] == requests[1] and requests[0]["customer_id"] == who
    assert stores.cluster.get(status_key(rid)) is not None


def _same_reco(apis: tuple[TestClient, TestClient], path: str, q: dict[str, str]) -> Any:
    """Recommendations of both apps: the same but for the catalogue's (random) version."""
    bodies = []
    for api in apis:
        r = api.get(path, params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is False, body
        assert body["freshness"].pop("catalog_version")
        bodies.append(body)
    assert bodies[0] == bodies[1], path
    return bodies[0]


def test_the_dataflow_notices_a_master_that_lost_its_data(cluster: Cluster) -> None:
    """One projection marker per master: a master emptied (a restart without persistence, a
    failover to an empty replica) asks for a re-projection, the others' markers stay."""
    from dataflows.reproject import ProjectionGuard, Reprojection, marker_keys

    client = connect(cluster_url(cluster.url))
    try:
        markers = marker_keys(client)
        assert len(markers) == 3 and len({client.keyslot(m) for m in markers}) == 3  # type: ignore[attr-defined]
        for m in markers:
            client.delete(m)
        guard = ProjectionGuard(Reprojection())
        assert guard.check(client) is True  # a fresh start: write everything the flow holds
        assert guard.check(client) is False
        assert guard.reprojection.generation == 1
        cluster.node(1).flushall()
        assert guard.check(client) is True and guard.reprojection.generation == 2
        assert guard.check(client) is False
    finally:
        client.close()

"""Segment membership reads, end to end on keys the dataflow wrote: a small simulated history is
replayed through the CLI into a dedicated database of the session Redis, then the HTTP endpoints
(``/v1/segments``, ``/v1/segments/{name}/members``, the profile's ``segments``), the CLI
(``segments``, ``segments members``, ``export --segment``, ``profile``) and ``segments rebuild``
are checked against the Redis keys themselves. The rebuild tests change the data: they come last.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from features.segments import load_segments, transition_id
from features.store import members_key, segments_key
from nextbest.export import SEGMENT_COLUMNS
from nextbest.settings import Settings
from schemas.events import format_ts, parse_as_of
from serving.app import create_app, get_now_ms
from serving.segments import DAY_MS, decode_cursor, encode_cursor, members_page
from tests.conftest import nextbest_cli

DB = 13
NAMES = load_segments().names


def _db_url(url: str) -> str:
    return f"{url}?db={DB}" if url.startswith("unix://") else url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture(scope="module")
def seeded(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A replayed history in database ``DB``: its env, the history's end and the home."""
    root = tmp_path_factory.mktemp("segments")
    url = _db_url(redis_url)
    client: redis.Redis = redis.Redis.from_url(url)
    client.flushdb()
    env = {
        "NEXTBEST_HOME": str(root / "home"),
        "NEXTBEST_REDIS_URL": url,
        "NEXTBEST_METRICS_PORT": "0",
        "NEXTBEST_LOG_LEVEL": "WARNING",
    }
    events = root / "events.jsonl"
    sim = ["--customers", "150", "--days", "40", "--seed", "3", "--out", str(events)]
    nextbest_cli("simulate", *sim, env=env)
    nextbest_cli("replay", str(events), "--json", env=env)
    ends = [parse_as_of(str(json.loads(line)["ts"])) for line in events.read_text().splitlines()]
    client.close()
    return {"env": env, "url": url, "end": max(e for e in ends if e is not None),
            "home": root / "home"}  # fmt: skip


@pytest.fixture
def client(seeded: dict[str, Any]) -> Iterator[redis.Redis]:
    c: redis.Redis = redis.Redis.from_url(seeded["url"])
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def api(seeded: dict[str, Any]) -> Iterator[TestClient]:
    app = create_app(Settings.from_env({}), seeded["url"])
    app.dependency_overrides[get_now_ms] = lambda: seeded["end"]
    with TestClient(app) as c:
        yield c


def _index(client: redis.Redis, name: str) -> list[tuple[str, int]]:
    return [
        (m.decode(), int(s)) for m, s in client.zrange(members_key(name), 0, -1, withscores=True)
    ]


def _walk(api: TestClient, name: str, limit: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = api.get(f"/v1/segments/{name}/members", params=params).json()
        out.extend((m["customer_id"], m["since_ms"]) for m in body["members"])
        assert len(body["members"]) <= limit
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def test_replay_filled_the_indexes(client: redis.Redis) -> None:
    sizes = {n: client.zcard(members_key(n)) for n in NAMES}
    assert sum(1 for v in sizes.values() if v > 0) >= 3, sizes


def test_profile_document_carries_segments(
    seeded: dict[str, Any], client: redis.Redis, api: TestClient
) -> None:
    name = max(NAMES, key=lambda n: client.zcard(members_key(n)))
    cid, since = _index(client, name)[0]
    stored = {k.decode(): int(v) for k, v in client.hgetall(segments_key(f"c:{cid}")).items()}
    assert stored[name] == since
    expected = {n: {"since": format_ts(s)} for n, s in stored.items()}
    as_of = format_ts(seeded["end"])
    http = api.get(f"/v1/customers/{cid}/profile", params={"as_of": as_of}).json()
    assert http["segments"] == expected
    cli = json.loads(nextbest_cli("profile", cid, "--as-of", as_of, env=seeded["env"]).stdout)
    assert cli == http
    # A customer in no segment has an empty mapping.
    members = {m.decode() for n in NAMES for m in client.zrange(members_key(n), 0, -1)}
    profiles = [k.decode() for k in client.scan_iter(match="nb:{c:*}:profile")]
    outsider = next(p[6:-9] for p in profiles if p[6:-9] not in members)
    assert api.get(f"/v1/customers/{outsider}/profile").json()["segments"] == {}


def test_list_segments_http_and_cli(
    seeded: dict[str, Any], client: redis.Redis, api: TestClient
) -> None:
    end = seeded["end"]
    last_exit: dict[tuple[str, str], int] = {}
    with (seeded["home"] / "segment-events.jsonl").open("rb") as fh:
        for line in fh:
            t = json.loads(line)
            if t["direction"] == "exited":
                key = (t["segment"], t["customer_id"])
                last_exit[key] = max(last_exit.get(key, 0), t["at_ms"])
    body = api.get("/v1/segments").json()
    assert [s["name"] for s in body["segments"]] == list(NAMES)
    assert body["as_of"] == format_ts(end)
    for row in body["segments"]:
        index = _index(client, row["name"])
        assert row["members"] == len(index)
        assert row["entries_24h"] == sum(1 for _, s in index if end - DAY_MS < s <= end)
        assert row["exits_24h"] == sum(
            1
            for (seg, _), at in last_exit.items()
            if seg == row["name"] and end - DAY_MS < at <= end
        )
        assert row["entry"] and row["description"]
    assert any(row["entries_24h"] > 0 for row in body["segments"])
    assert any(row["exits_24h"] > 0 for row in body["segments"])
    as_of = format_ts(end)
    cli = nextbest_cli("segments", "--json", "--as-of", as_of, env=seeded["env"])
    assert json.loads(cli.stdout) == body
    table = nextbest_cli("segments", "--as-of", as_of, env=seeded["env"]).stdout
    assert all(n in table for n in NAMES) and "exits_24h: customers whose" in table
    # The gauge shows the sizes.
    metrics = api.get("/metrics").text
    for row in body["segments"]:
        assert f'nextbest_segment_members{{segment="{row["name"]}"}} {row["members"]}.0' in metrics


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_members_pages_cover_the_index_once(
    client: redis.Redis, api: TestClient, limit: int
) -> None:
    for name in NAMES:
        assert _walk(api, name, limit) == _index(client, name)


def test_members_cli_equals_http(seeded: dict[str, Any], api: TestClient) -> None:
    name = "cart_abandoned"
    first = api.get(f"/v1/segments/{name}/members", params={"limit": 5}).json()
    cli = nextbest_cli("segments", "members", name, "--limit", "5", "--json", env=seeded["env"])
    assert json.loads(cli.stdout) == first
    if first["next_cursor"]:
        nxt = nextbest_cli("segments", "members", name, "--limit", "5", "--cursor",
                           first["next_cursor"], "--json", env=seeded["env"])  # fmt: skip
        params = {"limit": 5, "cursor": first["next_cursor"]}
        assert (
            json.loads(nxt.stdout) == api.get(f"/v1/segments/{name}/members", params=params).json()
        )
    bad = nextbest_cli("segments", "members", "nope", env=seeded["env"], check=False)
    assert bad.returncode == 2 and "no segment 'nope'" in bad.stderr


def test_paging_is_stable_under_concurrent_changes(client: redis.Redis) -> None:
    """Ties on one score, the cursor's member removed, members inserted before and after."""
    name = "scratch_paging"
    key = members_key(name)
    client.delete(key)
    original = {f"m{i:02d}": 100 + (i // 10) for i in range(40)}  # 10 ties per score
    client.zadd(key, original)
    seen: list[str] = []
    page, nxt = members_page(client, name, None, 4)
    seen += [c for c, _ in page]
    steps = 0
    while nxt is not None:
        steps += 1
        cursor = decode_cursor(nxt)
        if steps % 3 == 0:
            client.zrem(key, cursor.customer_id)  # the cursor's member leaves
        client.zadd(key, {f"early{steps}": 50, f"late{steps}": 1000 + steps})
        client.zadd(key, {f"m{steps:02d}x": 100 + (steps % 4)})  # a tie, maybe before the cursor
        page, nxt = members_page(client, name, cursor, 4)
        seen += [c for c, _ in page]
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(original) <= set(seen)  # every original member once
    assert not any(c.startswith("early") for c in seen)  # inserted before the cursor: not listed
    assert {f"late{i}" for i in range(1, steps)} <= set(seen)  # inserted after: listed
    client.delete(key)


def test_members_errors(api: TestClient) -> None:
    r = api.get("/v1/segments/nope/members")
    assert r.status_code == 404 and r.json()["error"] == "unknown_segment"
    for limit in ("0", "1001", "x"):
        r = api.get("/v1/segments/lapsed_30d/members", params={"limit": limit})
        assert r.status_code == 422 and r.json()["error"] == "validation_error"
    for cursor in ("!!!", "bm9wZQ", encode_cursor(1, "x")[:-2] + "$$"):
        r = api.get("/v1/segments/lapsed_30d/members", params={"cursor": cursor})
        assert r.status_code == 422 and r.json()["error"] == "bad_cursor", cursor
    r = api.get("/v1/segments", params={"as_of": "yesterday"})
    assert r.status_code == 422 and r.json()["error"] == "bad_as_of"


def test_export_segment(seeded: dict[str, Any], client: redis.Redis, tmp_path: Path) -> None:
    name = "cart_abandoned"
    index = _index(client, name)
    assert index
    as_of = format_ts(seeded["end"])
    out = tmp_path / "list.csv"
    nextbest_cli("export", "--segment", name, "--format", "csv", "--as-of", as_of, "--out",
                 str(out), env=seeded["env"])  # fmt: skip
    table = list(csv.reader(io.StringIO(out.read_text())))
    assert tuple(table[0]) == SEGMENT_COLUMNS
    rows = [dict(zip(SEGMENT_COLUMNS, r, strict=True)) for r in table[1:]]
    assert [(r["id"], r["segment_since"]) for r in rows] == [(c, format_ts(s)) for c, s in index]
    assert {r["segment"] for r in rows} == {name}
    lines = nextbest_cli("export", "--segment", name, "--as-of", as_of, env=seeded["env"]).stdout
    docs = [json.loads(x) for x in lines.splitlines()]
    assert [d["customer_id"] for d in docs] == [c for c, _ in index]
    assert all(name in d["segments"] and d["segment_since"] == d["segments"][name]["since"]
               for d in docs)  # fmt: skip
    bad = nextbest_cli("export", "--segment", "nope", env=seeded["env"], check=False)
    assert bad.returncode == 2 and "no segment 'nope'" in bad.stderr
    # The full export's JSONL rows carry the memberships too.
    full = nextbest_cli("export", "--as-of", as_of, env=seeded["env"]).stdout
    by_id = {d["customer_id"]: d for d in map(json.loads, full.splitlines())}
    assert all(name in by_id[c]["segments"] for c, _ in index)


def _records(home: Path) -> list[dict[str, Any]]:
    path = home / "segment-events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rebuild_emits_backfill_and_converges(seeded: dict[str, Any], client: redis.Redis) -> None:
    env, home = seeded["env"], seeded["home"]
    name = "lapsed_30d"
    profiles = sorted(k.decode()[6:-9] for k in client.scan_iter(match="nb:{c:*}:profile"))
    before = {c for c, _ in _index(client, name)}
    n0 = len(_records(home))
    as_of = seeded["end"] + 60 * DAY_MS  # everyone has been away for 60 days
    out = nextbest_cli("segments", "rebuild", name, "--as-of", str(as_of), "--json", env=env)
    summary = json.loads(out.stdout)
    new = _records(home)[n0:]
    assert summary["entered"] == len(set(profiles) - before) == len(new) > 0
    assert summary["exited"] == 0 and summary["profiles"] == len(profiles)
    for rec in new:
        assert rec["backfill"] is True and rec["segment"] == name
        assert rec["direction"] == "entered" and rec["at_ms"] == as_of
        assert rec["transition_id"] == transition_id(f"c:{rec['customer_id']}", name,
                                                     "entered", as_of)  # fmt: skip
        assert rec["values"]["days_since_last_seen"] >= 60
    assert {r["customer_id"] for r in new} == set(profiles) - before
    index = dict(_index(client, name))
    assert set(index) == set(profiles)
    for cid in profiles:
        assert int(client.hget(segments_key(f"c:{cid}"), name) or 0) == index[cid]
    # Converged: a second rebuild (same time, then later) emits nothing and changes nothing.
    for t in (as_of, as_of + DAY_MS):
        again = json.loads(nextbest_cli("segments", "rebuild", name, "--as-of", str(t), "--json",
                                        env=env).stdout)  # fmt: skip
        assert (again["entered"], again["exited"], again["index_removed"]) == (0, 0, 0)
    assert len(_records(home)) == n0 + len(new)
    assert dict(_index(client, name)) == index


def test_rebuild_exits_and_repairs_the_index(seeded: dict[str, Any], client: redis.Redis) -> None:
    """A stored membership the rules no longer grant exits (backfill); an index entry no hash
    lists goes; a member missing from the index is indexed again."""
    env, home = seeded["env"], seeded["home"]
    name = "browsing_not_buying"  # nobody browses 61 days after the history's end
    members = {c for c, _ in _index(client, name)}
    cid = next(c for c, _ in _index(client, "lapsed_30d") if c not in members)
    client.hset(segments_key(f"c:{cid}"), name, "123")  # not in the index either
    client.zadd(members_key(name), {"ghost": 5})
    n0 = len(_records(home))
    as_of = seeded["end"] + 61 * DAY_MS
    out = nextbest_cli("segments", "rebuild", name, "--as-of", str(as_of), "--json", env=env)
    summary = json.loads(out.stdout)
    assert (summary["entered"], summary["exited"]) == (0, len(members) + 1)
    assert summary["index_removed"] == 1 and summary["members"] == 0
    new = _records(home)[n0:]
    assert {r["customer_id"] for r in new} == members | {cid}
    assert all(r["direction"] == "exited" and r["backfill"] is True for r in new)
    rec = next(r for r in new if r["customer_id"] == cid)
    assert rec["reason"]["rule"] == "entry" and rec["reason"]["condition"].startswith("not ")
    assert client.hget(segments_key(f"c:{cid}"), name) is None
    assert client.zcard(members_key(name)) == 0
    # An index entry lost: the rebuild puts it back from the hash, with no record.
    lapsed = _index(client, "lapsed_30d")
    client.zrem(members_key("lapsed_30d"), lapsed[0][0])
    n1 = len(_records(home))
    nextbest_cli("segments", "rebuild", "lapsed_30d", "--as-of", str(as_of), env=env)
    assert _index(client, "lapsed_30d") == lapsed and len(_records(home)) == n1
    bad = nextbest_cli("segments", "rebuild", "nope", env=env, check=False)
    assert bad.returncode == 2 and "no segment 'nope'" in bad.stderr

"""Next best action: the catalogue, eligibility, contact policy, arbitration and exploration, the
HTTP endpoints against a real Redis (also paused and killed), the decision log and the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import serving.app as app_module
from decisions.catalog import (
    ActionConfigError,
    Channel,
    Contact,
    builtin_path,
    load_catalog,
    parse_catalog,
)
from decisions.contact import DAY_MS, Contacts, blocked
from decisions.policy import Propensity, decide
from decisions.schema import OUT, actions_schema, rendered
from decisions.store import contacts_key
from features.profile import ProfileState, ingest, new_state
from features.segments import load_segments
from features.store import link_key, model_keys, write_states
from models.features import FEATURE_NAMES
from nextbest.runtime import start_redis, stop_redis
from nextbest.settings import Settings
from schemas.decisions import decode_decision
from schemas.events import Event
from serving.app import create_app
from serving.decision_log import JsonlDecisionLog
from tests.conftest import nextbest_cli

SEGMENTS = load_segments().names
T0 = 1_767_323_045_000  # 2026-01-02T03:04:05Z
AS_OF = "2026-01-02T12:00:00Z"

#: A deterministic catalogue (no exploration) for the HTTP tests.
CATALOG = """
exploration: {epsilon: 0}
channels:
  web: {max_per_day: 2, fallback: fallback_slot}
  email: {}
actions:
  - id: cart_nudge
    description: remind of the cart
    channels: [web, email]
    eligibility: {feature: cart_items, op: ge, value: 1}
    value: {feature: cart_value}
    prior: 0.2
    contact: {max_per_day: 1, after_conversion: 30d}
    payload: {category: "{top_categories}"}
  - id: generic
    description: anything
    channels: [web]
    value: 1
    prior: 0.1
  - id: fallback_slot
    description: the fallback
    channels: [web]
    eligibility: {feature: events_total, op: lt, value: 0}
    value: 1
    prior: 0.01
"""


# -- the catalogue ------------------------------------------------------------------------------


def test_shipped_catalogue_loads_and_validates_against_the_schema() -> None:
    cat = load_catalog(segments=SEGMENTS)
    assert cat.source == str(builtin_path())
    assert {"cart_reminder", "winback_discount", "new_arrivals", "loyalty_invitation"} <= set(
        cat.ids
    )
    assert cat.channels["web"].fallback == "recommended_products"
    schema = json.loads(OUT.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(builtin_path().read_text()), schema)
    lines = builtin_path().read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- id:"):
            assert lines[i - 1].strip().startswith("#"), line  # every action is commented


def test_schema_file_is_current() -> None:
    assert OUT.read_text() == rendered(), "run `make schemas`"
    assert actions_schema()["properties"]["actions"]["minItems"] == 1


def _err(text: str) -> ActionConfigError:
    with pytest.raises(ActionConfigError) as info:
        parse_catalog(textwrap.dedent(text), "c.yaml", segments=SEGMENTS)
    return info.value


BASE = """\
channels:
  web: {max_per_day: 3}
actions:
  - id: a
    description: an action
    channels: [web]
    value: 2
    prior: 0.1
"""


@pytest.mark.parametrize(
    ("extra", "line", "action", "field", "fragment"),
    [
        ("    priority: 3\n", 9, "a", "priority", "unknown key 'priority'"),
        ("    weight: -1\n", 9, "a", "weight", "a number >= 0"),
        ("    contact: {min_interval: 2 days}\n", 9, "a", "contact.min_interval", "bad duration"),
        ("    contact: {max_per_week: 2}\n", 9, "a", "contact.max_per_week", "unknown key"),
        ("    eligibility: {segment: at_rsik}\n", 9, "a", "eligibility", "did you mean 'at_risk'"),
        (
            "    eligibility: {feature: cart_items, op: contains, value: 1}\n",
            9,
            "a",
            "eligibility.op",
            "does not apply to cart_items",
        ),
        ("    valid_from: yesterday\n", 9, "a", "valid_from", "a time"),
        (
            "    valid_from: 2026-02-01T00:00:00Z\n    valid_until: 2026-01-01T00:00:00Z\n",
            10,
            "a",
            "valid_until",
            "after valid_from",
        ),
    ],
)
def test_action_errors_name_file_line_action_and_field(
    extra: str, line: int, action: str, field: str, fragment: str
) -> None:
    e = _err(BASE + extra)
    assert (e.file, e.line, e.action, e.field) == ("c.yaml", line, action, field), str(e)
    assert fragment in e.message, e.message
    assert str(e).startswith(f"c.yaml:{line}: action {action!r}, field {field}: ")


def test_a_segment_rule_without_segments_says_how() -> None:
    with pytest.raises(ActionConfigError) as info:
        parse_catalog(BASE + "    eligibility: {segment: at_risk}\n", "c.yaml", segments=())
    assert "NEXTBEST_SEGMENTS=off needs actions without segment rules" in info.value.message


def test_file_level_errors() -> None:
    e = _err(BASE.replace("prior: 0.1", "prior: 1.5"))
    assert (e.line, e.field) == (8, "prior") and "probability" in e.message
    e = _err(BASE.replace("channels: [web]", "channels: [sms]"))
    assert (e.line, e.field) == (6, "channels") and "'sms' is not declared" in e.message
    e = _err(BASE.replace("{max_per_day: 3}", "{max_per_day: 3, fallback: b}"))
    assert (e.line, e.field) == (2, "channels.web.fallback") and "unknown action 'b'" in e.message
    e = _err(BASE + BASE[BASE.index("  - id") :])
    assert (e.line, e.action, e.field) == (9, "a", "id") and "duplicate" in e.message
    e = _err(BASE + "    value: {feature: cart_valu}\n")
    assert e.line == 9 and "duplicate key 'value'" in e.message  # YAML: value given twice
    e = _err(BASE.replace("value: 2", "value: {feature: cart_valu}"))
    assert (e.line, e.field) == (7, "value.feature") and "did you mean 'cart_value'" in e.message
    e = _err("channels: {web: {}}\nactions: []\n")
    assert e.field == "actions"
    e = _err("channels: {web: {}\n")
    assert e.action is None and "YAML syntax" in e.message
    e = _err("exploration: {epsilon: 2}\n" + BASE)
    assert e.field == "exploration.epsilon"
    two = BASE + "  - id: b\n    description: e\n    channels: [web]\n    value: 1\n    prior: 0\n"
    mail = two.replace("web: {max_per_day: 3}", "web: {fallback: b}\n  email: {}").replace(
        "channels: [web]\n    value: 1", "channels: [email]\n    value: 1"
    )
    e = _err(mail)
    assert e.field == "channels.web.fallback" and "not offered on web" in e.message


def test_a_bad_catalogue_stops_serve_and_decide(tmp_path: Path) -> None:
    bad = tmp_path / "actions.yaml"
    bad.write_text(BASE.replace("prior: 0.1", "prior: high"))
    env = {"NEXTBEST_ACTIONS": str(bad), "NEXTBEST_HOME": str(tmp_path / "home")}
    for args in (("decide", "42"), ("serve", "--port", "1")):
        out = nextbest_cli(*args, env=env, check=False, timeout=60)
        assert out.returncode == 2, out.stderr
        assert f"{bad}:8: action 'a', field prior" in out.stderr


# -- contact policy -------------------------------------------------------------------------------


def test_contact_policy_reasons() -> None:
    now = 100 * DAY_MS + 5_000
    web = Channel("web", max_per_day=2)
    c = Contacts.parse(
        {
            b"ch|web|100": b"2",
            b"ad|a|web|100": b"1",
            b"ls|a|web": str(now - 1_000).encode(),
            b"cv|a": str(now - DAY_MS).encode(),
        }
    )
    assert blocked(Contact(), web, "a", c, now) == "channel_daily_limit"
    free = Channel("web")
    assert blocked(Contact(max_per_day=1), free, "a", c, now) == "action_daily_limit"
    assert blocked(Contact(min_interval_ms=2_000), free, "a", c, now) == "min_interval"
    assert blocked(Contact(min_interval_ms=1_000), free, "a", c, now) is None
    assert blocked(Contact(after_conversion_ms=2 * DAY_MS), free, "a", c, now) == (
        "after_conversion"
    )
    assert blocked(Contact(max_per_day=1), free, "a", c, now + DAY_MS) is None  # a new day
    assert blocked(Contact(), web, "a", c, now + DAY_MS) is None
    # a serve or conversion after the decision time (as_of in the past) does not count
    assert blocked(Contact(min_interval_ms=10**9, after_conversion_ms=10**9), free, "a", c,
                   now - 2 * DAY_MS) is None  # fmt: skip


# -- arbitration and exploration ----------------------------------------------------------------


def _catalog(k: int, eps: float) -> Any:
    actions = "".join(
        f"  - {{id: a{i}, description: x, channels: [web], value: {1 + i}, prior: 0.1}}\n"
        for i in range(k)
    )
    return parse_catalog(f"exploration: {{epsilon: {eps}}}\nchannels: {{web: {{}}}}\n"
                         f"actions:\n{actions}")  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    props=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    eps=st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]),
)
def test_arbitration_ranks_by_priority_and_probabilities_are_exact(
    props: list[float], eps: float
) -> None:
    cat = _catalog(len(props), eps)

    def propensity(a: Any, f: Any) -> Propensity:
        return Propensity(props[int(a.id[1:])], "model", 1)

    d = decide(cat, "web", {}, {}, {}, Contacts(), 0, random.Random(0), propensity)
    pri = [c.priority for c in d.candidates]
    assert pri == sorted(pri, reverse=True)
    for c in d.candidates:
        assert c.priority == pytest.approx(c.propensity.p * c.value * c.action.weight)
    k = len(props)
    assert sum(c.probability for c in d.candidates) == pytest.approx(1.0)
    assert d.candidates[0].probability == pytest.approx(1 - eps + eps / k)
    assert d.served is not None and d.ranked[0] is d.served


@pytest.mark.parametrize(("k", "eps"), [(1, 0.1), (3, 0.1), (5, 0.3), (4, 1.0)])
def test_logged_probability_matches_the_observed_serve_frequency(k: int, eps: float) -> None:
    """Over many seeded draws, each action is served as often as its logged probability says
    (binomial tolerance of 4.5 standard deviations)."""
    cat = _catalog(k, eps)
    n = 20_000
    served: Counter[str] = Counter()
    logged: dict[str, float] = {}
    for seed in range(n):
        d = decide(cat, "web", {}, {}, {}, Contacts(), 0, random.Random(seed))
        assert d.served is not None
        served[d.served.action.id] += 1
        logged[d.served.action.id] = d.served.probability
        assert d.selection == ("greedy" if d.served is d.candidates[0] else "exploration")
    for a, p in logged.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(served[a] / n - p) <= 4.5 * sd + 1e-9, (a, served[a] / n, p)
    assert sum(logged.values()) == pytest.approx(1.0)  # every candidate was served at least once


def test_validity_window_and_fallback() -> None:
    cat = parse_catalog(
        textwrap.dedent("""\
        channels: {web: {fallback: b}}
        actions:
          - {id: a, description: x, channels: [web], value: 1, prior: 0.5,
             valid_from: 2026-01-01T00:00:00Z, valid_until: 2026-02-01T00:00:00Z}
          - {id: b, description: y, channels: [web], value: 1, prior: 0.1,
             eligibility: {feature: cart_items, op: ge, value: 1}}
        """)
    )
    jan = 1_767_830_400_000  # 2026-01-08
    d = decide(cat, "web", {"cart_items": 0}, {}, {}, Contacts(), jan, random.Random(0))
    assert d.served is not None and d.served.action.id == "a"
    feb = jan + 31 * DAY_MS
    d = decide(cat, "web", {"cart_items": 0}, {}, {}, Contacts(), feb, random.Random(0))
    assert d.selection == "fallback" and d.served is not None and d.served.action.id == "b"
    assert dict(d.excluded) == {"a": "not_valid", "b": "not_eligible"}


# -- HTTP ---------------------------------------------------------------------------------------


def _customer(client: redis.Redis, cid: str, cart: bool = True) -> ProfileState:
    events = [
        Event(event_id=f"{cid}-1", type="product_view", ts=T0, customer_id=cid,
              product_id="p1", category="shoes", price=40.0),
    ]  # fmt: skip
    if cart:
        events.append(
            Event(event_id=f"{cid}-2", type="add_to_cart", ts=T0 + 1000, customer_id=cid,
                  product_id="p1", category="shoes", price=40.0, quantity=2)
        )  # fmt: skip
    state = new_state("c:" + cid)
    for ev in events:
        assert ingest(state, ev, 600_000) == "applied"
    assert write_states(client, [state]) == 1
    return state


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    p = tmp_path / "actions.yaml"
    p.write_text(CATALOG)
    return p


@pytest.fixture
def nba(
    redis_url: str,
    redis_client: redis.Redis,
    catalog_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[TestClient, Path]]:
    monkeypatch.setattr(app_module, "MODEL_RELOAD_SECONDS", 0.1)
    settings_ = replace(Settings.from_env({}), actions=str(catalog_file))
    log_path = tmp_path / "decisions.jsonl"
    app = create_app(settings_, redis_url, decision_log=JsonlDecisionLog(log_path))
    with TestClient(app) as client:
        yield client, log_path


def _get(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    resp = client.get(path, params={"as_of": AS_OF, **params})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_customer_decision_is_ranked_explained_and_logged(
    nba: tuple[TestClient, Path], redis_client: redis.Redis
) -> None:
    api, log_path = nba
    _customer(redis_client, "42")
    body = _get(api, "/v1/customers/42/next-best-action", n=5)
    assert body["customer_id"] == "42" and body["channel"] == "web" and not body["degraded"]
    ids = [a["id"] for a in body["actions"]]
    assert ids == ["cart_nudge", "generic"]  # fallback_slot is never eligible
    top = body["actions"][0]
    assert top["served"] and top["probability"] == 1.0 and top["source"] == "prior"
    assert top["value"] == 80.0 and top["propensity"] == 0.2 and top["priority"] == 16.0
    assert top["payload"] == {"category": "shoes"}
    assert top["explanation"]["eligibility"] == ["cart_items >= 1"]
    assert top["explanation"]["arbitration"].startswith("priority 16 = propensity 0.2 (prior)")
    assert body["excluded"] == [{"id": "fallback_slot", "reason": "not_eligible"}]
    assert body["policy"] == {"name": "epsilon_greedy", "epsilon": 0.0, "selection": "greedy",
                              "served_probability": 1.0}  # fmt: skip
    fresh = body["freshness"]
    assert fresh["as_of"] == AS_OF and fresh["newest_event"] == "2026-01-02T03:04:06Z"
    assert fresh["profile"] == "stored" and len(fresh["catalog"]) == 12

    (line,) = log_path.read_bytes().splitlines()
    rec = decode_decision(line)
    assert rec.decision_id == body["decision_id"] and rec.key == "c:42" and rec.customer_id == "42"
    assert rec.served == "cart_nudge" and rec.served_probability == 1.0
    assert [c.action_id for c in rec.candidates] == ["cart_nudge", "generic"]
    assert list(rec.features) == list(FEATURE_NAMES)
    assert rec.features["log_cart_items"] > 0


def test_contact_counters_limit_serves_per_action_and_channel(
    nba: tuple[TestClient, Path], redis_client: redis.Redis
) -> None:
    api, _ = nba
    _customer(redis_client, "7")
    route = "/v1/customers/7/next-best-action"
    first = _get(api, route)
    assert first["actions"][0]["id"] == "cart_nudge"
    second = _get(api, route)  # cart_nudge: at most once a day
    assert second["actions"][0]["id"] == "generic"
    assert {"id": "cart_nudge", "reason": "action_daily_limit"} in second["excluded"]
    third = _get(api, route)  # web: at most 2 offers a day -> the fallback
    assert third["policy"]["selection"] == "fallback"
    assert [a["id"] for a in third["actions"]] == ["fallback_slot"]
    assert {e["reason"] for e in third["excluded"]} == {"channel_daily_limit", "not_eligible"}
    stored = redis_client.hgetall(contacts_key("c:7"))
    day = 1_767_355_200_000 // DAY_MS
    assert stored[f"ch|web|{day}".encode()] == b"2"  # a fallback is not counted
    assert stored[f"ad|cart_nudge|web|{day}".encode()] == b"1"
    assert 0 < redis_client.pttl(contacts_key("c:7")) <= (30 + 2) * DAY_MS
    tomorrow = _get(api, route, as_of="2026-01-03T12:00:00Z")
    assert tomorrow["actions"][0]["id"] == "cart_nudge"
    # a conversion on the action (the dataflow writes it) blocks it for 30 days
    redis_client.hset(contacts_key("c:7"), "cv|cart_nudge", str(1_767_355_200_000))
    later = _get(api, route, as_of="2026-01-10T12:00:00Z")
    assert {"id": "cart_nudge", "reason": "after_conversion"} in later["excluded"]


def test_visitors_and_unknown_profiles(
    nba: tuple[TestClient, Path], redis_client: redis.Redis
) -> None:
    api, _ = nba
    _customer(redis_client, "9")
    redis_client.set(link_key("dev-1"), "9")
    linked = _get(api, "/v1/visitors/dev-1/next-best-action")
    assert linked["customer_id"] == "9" and linked["anonymous_id"] == "dev-1"
    assert linked["actions"][0]["id"] == "cart_nudge"
    unknown = _get(api, "/v1/visitors/dev-2/next-best-action")
    assert unknown["customer_id"] is None and unknown["freshness"]["profile"] == "empty"
    assert [a["id"] for a in unknown["actions"]] == ["generic"]
    stranger = _get(api, "/v1/customers/nobody/next-best-action", channel="email")
    assert stranger["actions"] == [] and stranger["policy"]["selection"] == "none"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"channel": "fax"}, "unknown_channel"),
        ({"n": "0"}, "validation_error"),
        ({"n": "21"}, "validation_error"),
        ({"as_of": "yesterday"}, "bad_as_of"),
    ],
)
def test_bad_requests_are_422(
    nba: tuple[TestClient, Path], params: dict[str, str], error: str
) -> None:
    api, _ = nba
    resp = api.get("/v1/customers/42/next-best-action", params=params)
    assert resp.status_code == 422 and resp.json()["error"] == error, resp.text


def test_metrics_count_decisions(nba: tuple[TestClient, Path], redis_client: redis.Redis) -> None:
    api, _ = nba
    _customer(redis_client, "5")
    for _ in range(3):
        _get(api, "/v1/customers/5/next-best-action")
    text = api.get("/metrics").text
    assert 'nextbest_decisions_total{action="cart_nudge",channel="web"} 1.0' in text
    assert 'nextbest_decision_fallbacks_total{channel="web",reason="nothing_eligible"} 1.0' in text
    assert 'nextbest_decision_seconds_count{channel="web"} 3.0' in text


@pytest.mark.production_budget
def test_degrades_when_redis_is_paused_or_dead(catalog_file: Path, tmp_path: Path) -> None:
    """A real Redis, paused (SIGSTOP: slow) then killed: 200 with the fallback, degraded, within
    the time budget; /readyz says so."""
    proc, url = start_redis(tmp_path / "redis")
    settings_ = replace(Settings.from_env({}), actions=str(catalog_file))
    log_path = tmp_path / "decisions.jsonl"
    try:
        app = create_app(settings_, url, decision_log=JsonlDecisionLog(log_path))
        with TestClient(app) as api:
            assert api.get("/readyz").status_code == 200  # (a connection made: 0.1 s is tight)
            assert _get(api, "/v1/customers/1/next-best-action")["degraded"] is False
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                t = time.monotonic()
                body = _get(api, "/v1/customers/1/next-best-action")
                took = time.monotonic() - t
                assert body["degraded"] is True and body["reason"] == "redis_timeout"
                assert [a["id"] for a in body["actions"]] == ["fallback_slot"]
                assert body["policy"]["selection"] == "fallback"
                assert took < 1.4, took  # the 0.1 s budget, not 3 socket timeouts of 0.5 s
                email = _get(api, "/v1/customers/1/next-best-action", channel="email")
                assert email["degraded"] and email["actions"] == []
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
            dead = _get(api, "/v1/visitors/x/next-best-action")
            assert dead["degraded"] and dead["reason"] == "redis_unavailable"
            ready = api.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["decisions"] == (
                "degraded: redis_timeout, redis_unavailable"
            )
            text = api.get("/metrics").text
            assert 'reason="redis_timeout"' in text and 'reason="redis_unavailable"' in text
        recs = [decode_decision(x) for x in log_path.read_bytes().splitlines()]
        assert [r.reason for r in recs] == [None, "redis_timeout", "redis_timeout",
                                            "redis_unavailable"]  # fmt: skip
    finally:
        if proc.poll() is None:
            stop_redis(url, proc.pid)


def test_an_unloadable_action_model_degrades_to_the_fallback(
    nba: tuple[TestClient, Path], redis_client: redis.Redis
) -> None:
    """A published checkpoint that cannot be loaded (and no previous one): the channel's
    fallback, degraded (a model that has not learned enough is the prior: not degraded)."""
    api, _ = nba
    _customer(redis_client, "3")
    assert _get(api, "/v1/customers/3/next-best-action")["degraded"] is False
    cur, _prev, ver = model_keys("action:generic")
    redis_client.set(cur, b"NBCK garbage")
    redis_client.set(ver, b"1")
    deadline = time.monotonic() + 10
    while True:
        body = _get(api, "/v1/customers/3/next-best-action")
        if body["degraded"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body["reason"] == "model_unavailable" and body["policy"]["selection"] == "fallback"
    assert [a["id"] for a in body["actions"]] == ["fallback_slot"]
    email = _get(api, "/v1/customers/3/next-best-action", channel="email")
    assert email["degraded"] is False  # generic is not offered by email
    assert "model_unavailable" in api.get("/readyz").json()["checks"]["decisions"]


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_decide(
    redis_url: str, redis_client: redis.Redis, catalog_file: Path, tmp_path: Path
) -> None:
    _customer(redis_client, "77")
    env = {"NEXTBEST_REDIS_URL": redis_url, "NEXTBEST_ACTIONS": str(catalog_file),
           "NEXTBEST_HOME": str(tmp_path / "home")}  # fmt: skip
    out = nextbest_cli("decide", "77", "--as-of", AS_OF, env=env)
    body = json.loads(out.stdout)
    assert body["actions"][0]["id"] == "cart_nudge" and body["customer_id"] == "77"
    assert not redis_client.exists(contacts_key("c:77"))  # a preview: nothing counted
    assert not (tmp_path / "home" / "decisions.jsonl").exists()
    nextbest_cli("decide", "77", "--as-of", AS_OF, "--record", env=env)
    assert redis_client.exists(contacts_key("c:77"))
    (line,) = (tmp_path / "home" / "decisions.jsonl").read_bytes().splitlines()
    assert decode_decision(line).served == "cart_nudge"
    again = json.loads(nextbest_cli("decide", "77", "--as-of", AS_OF, env=env).stdout)
    assert again["actions"][0]["id"] == "generic"  # the recorded serve counts
    vis = json.loads(nextbest_cli("decide", "--anonymous-id", "d", "-n", "1", env=env).stdout)
    assert vis["anonymous_id"] == "d" and len(vis["actions"]) == 1
    for args, msg in (
        ((), "give a customer ID or --anonymous-id"),
        (("77", "--channel", "fax"), "--channel 'fax'"),
        (("77", "-n", "0"), "-n must be in"),
        (("77", "--as-of", "soon"), "bad --as-of"),
    ):
        bad = nextbest_cli("decide", *args, env=env, check=False)
        assert bad.returncode == 2 and msg in bad.stderr, bad.stderr

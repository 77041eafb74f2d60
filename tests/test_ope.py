"""Off-policy evaluation (decisions/ope.py, ``nextbest evaluate-policy``) on simulated logs.

The simulator is a contextual bandit: a context x ~ U(-1, 1); four actions whose true
conversion probabilities are logistic in x; each action eligible with probability 0.8; the
engine's propensity estimates are the truth with logit noise (sd 0.3); priority = estimate x
value; the logging policy is epsilon-greedy (eps 0.2) over the eligible actions, its logged
probabilities exact. Conversions (and their values) are drawn from the truth and written as
``decision_outcome`` events, with impressions, clicks and noise the join must ignore. A target
policy's true value is its expected reward over a fresh, large population of contexts.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from decisions import ope
from schemas.decisions import Candidate, DecisionRecord, encode_decision
from schemas.events import Event, encode_event
from tests.conftest import nextbest_cli

ACTIONS = ("free_shipping", "discount_10", "bundle", "newsletter")
VALUES = np.array([8.0, 15.0, 25.0, 2.0])
A = np.array([-2.0, -2.6, -3.2, -1.2])  # true logit = A + B x
B = np.array([1.2, -1.0, 0.6, 0.2])
EPS, ELIGIBLE, NOISE = 0.2, 0.8, 0.3
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN, DAY = 60_000, ope.DAY_MS
TARGETS = ("greedy", "uniform", "action:discount_10")
F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class World:
    p: F  # true conversion probabilities (n, 4)
    prop: F  # the engine's estimates (n, 4)
    elig: npt.NDArray[np.bool_]  # (n, 4)
    top: npt.NDArray[np.intp]  # the greedy (highest-priority eligible) action of each context


def _world(rng: np.random.Generator, n: int) -> World:
    x = rng.uniform(-1, 1, n)[:, None]
    logit = A + B * x
    prop = 1 / (1 + np.exp(-(logit + rng.normal(0, NOISE, (n, 4)))))
    elig = rng.random((n, 4)) < ELIGIBLE
    elig[~elig.any(axis=1), 0] = True
    top = np.argmax(np.where(elig, prop * VALUES, -np.inf), axis=1)
    return World(1 / (1 + np.exp(-logit)), prop, elig, top)


@functools.cache
def truth(reward: str = "conversion") -> dict[str, float]:
    """Each target policy's expected reward over 400k fresh contexts."""
    w = _world(np.random.default_rng(999), 400_000)
    r = w.p * VALUES if reward == "value" else w.p
    rows = np.arange(len(r))
    a = ACTIONS.index("discount_10")
    return {
        "greedy": float(r[rows, w.top].mean()),
        "uniform": float(((r * w.elig).sum(1) / w.elig.sum(1)).mean()),
        "action:discount_10": float(r[w.elig[:, a], a].mean()),
    }


@dataclass(frozen=True)
class Sim:
    records: list[DecisionRecord]
    events: list[Event]
    noise: dict[str, int]  # outcome events the join must ignore, by reason


def _record(i: int, w: World, served: int, mu: float, explore: bool) -> DecisionRecord:
    k = int(w.elig[i].sum())
    top = int(w.top[i])
    cands = [
        Candidate(action_id=ACTIONS[a], propensity=float(w.prop[i, a]), source="model",
                  value=float(VALUES[a]), weight=1.0, priority=float(w.prop[i, a] * VALUES[a]),
                  probability=float((1 - EPS) * (a == top) + EPS / k))
        for a in np.flatnonzero(w.elig[i])
    ]  # fmt: skip
    cands.sort(key=lambda c: -c.priority)
    return DecisionRecord(
        decision_id=f"d{i}", ts=T0 + i * MIN, key=f"c:{i % 500}", customer_id=str(i % 500),
        channel="web", policy="epsilon_greedy", epsilon=EPS, served=ACTIONS[served],
        served_probability=mu, selection="exploration" if explore else "greedy",
        candidates=cands, features={},
    )  # fmt: skip


def _outcome(eid: str, did: str, action: str, ts: int, kind: str, value: float | None) -> Event:
    return Event(event_id=eid, type="decision_outcome", ts=ts, customer_id="c",
                 decision_id=did, action_id=action, outcome=kind, value=value)  # fmt: skip


def simulate(seed: int, n: int) -> Sim:
    """A logged epsilon-greedy history of ``n`` decisions and its outcome events."""
    rng = np.random.default_rng(seed)
    w = _world(rng, n)
    explore = rng.random(n) < EPS
    pick = np.argmax(np.where(w.elig, rng.random((n, 4)), -1.0), axis=1)  # uniform eligible
    served = np.where(explore, pick, w.top)
    mu = (1 - EPS) * (served == w.top) + EPS / w.elig.sum(1)
    converted = rng.random(n) < w.p[np.arange(n), served]
    records = [_record(i, w, int(served[i]), float(mu[i]), bool(explore[i])) for i in range(n)]
    events: list[Event] = []
    noise = {"not_conversion": 0, "late": 0, "unknown_decision": 0, "duplicate": 0}
    for i, r in enumerate(records):
        a = ACTIONS[int(served[i])]
        events.append(_outcome(f"i{i}", r.decision_id, a, r.ts + 1000, "impression", None))
        noise["not_conversion"] += 1
        if converted[i]:
            ts = r.ts + int(rng.uniform(MIN, 6 * DAY))
            value = float(VALUES[served[i]] * rng.uniform(0.5, 1.5))
            events.append(_outcome(f"c{i}", r.decision_id, a, ts, "conversion", value))
            if rng.random() < 0.02:
                events.append(events[-1])
                noise["duplicate"] += 1
        elif rng.random() < 0.03:
            late = r.ts + 7 * DAY + int(rng.uniform(0, 5 * DAY))
            events.append(_outcome(f"l{i}", r.decision_id, a, late, "conversion", 9.0))
            noise["late"] += 1
        if rng.random() < 0.01:
            events.append(_outcome(f"u{i}", f"ghost{i}", a, r.ts, "conversion", 1.0))
            noise["unknown_decision"] += 1
    return Sim(records, events, noise)


@functools.cache
def big_sim() -> Sim:
    return simulate(2026, 20_000)


def _by(report: ope.Report) -> dict[tuple[str, str], ope.Estimate]:
    return {(e.policy, e.estimator): e for e in report.estimates}


# ---------------------------------------------------------------------------------------------
# coverage of the true policy value


@pytest.mark.parametrize("reward", ["conversion", "value"])
def test_intervals_cover_true_policy_value(reward: ope.Reward) -> None:
    sim = big_sim()
    rep = ope.evaluate(sim.records, sim.events, TARGETS, reward=reward)
    est = _by(rep)
    for policy in TARGETS:
        true = truth(reward)[policy]
        for name in ope.ESTIMATORS:
            e = est[policy, name]
            assert e.low <= true <= e.high, (policy, name, e, true)
            assert e.high - e.low < 0.3 * true  # informative, not vacuous
    # the greedy policy is near what the log served: weights 1/(1 - eps + eps/K) and 0
    assert est["greedy", "ips"].max_weight <= 1 / (1 - EPS + EPS / 4) + 1e-12
    assert rep.not_applicable["action:discount_10"] > 0.1 * len(sim.records)


def test_coverage_over_seeds() -> None:
    """30 independent logs: the 95 % intervals cover the truth in >= 85 % of cases."""
    hits = {name: 0 for name in ope.ESTIMATORS}
    total = 0
    for seed in range(30):
        sim = simulate(seed, 2000)
        rep = ope.evaluate(sim.records, sim.events, TARGETS)
        for e in rep.estimates:
            hits[e.estimator] += e.low <= truth()[e.policy] <= e.high
        total += len(TARGETS)
    coverage = {k: v / total for k, v in hits.items()}
    print("coverage over 30 seeds:", coverage)
    assert min(coverage.values()) >= 0.85, coverage


def test_logging_policy_estimate_is_the_mean_reward() -> None:
    sim = simulate(7, 3000)
    rep = ope.evaluate(sim.records, sim.events, ["logging"])
    est = _by(rep)
    assert rep.mean_reward > 0
    assert est["logging", "ips"].value == pytest.approx(rep.mean_reward, abs=1e-12)
    assert est["logging", "snips"].value == pytest.approx(rep.mean_reward, abs=1e-12)
    assert est["logging", "ips"].ess == pytest.approx(3000)
    dr = est["logging", "dr"]
    assert dr.low <= rep.mean_reward <= dr.high


def _with_model(records: list[DecisionRecord], propensity: float) -> list[DecisionRecord]:
    """The records with every candidate's propensity replaced (a useless reward model)."""
    return [
        msgspec.structs.replace(
            r, candidates=[msgspec.structs.replace(c, propensity=propensity) for c in r.candidates]
        )
        for r in records
    ]


def test_dr_is_tighter_than_ips_with_a_good_model_and_robust_with_a_bad_one() -> None:
    sim = big_sim()
    good = _by(ope.evaluate(sim.records, sim.events, TARGETS))
    bad = _by(ope.evaluate(_with_model(sim.records, 0.5), sim.events, TARGETS))
    for policy in TARGETS:
        width = {k: good[policy, k].high - good[policy, k].low for k in ope.ESTIMATORS}
        assert width["dr"] < width["ips"], (policy, width)
        bad_dr = bad[policy, "dr"]
        assert bad_dr.high - bad_dr.low > max(width.values())
        assert bad_dr.low <= truth()[policy] <= bad_dr.high  # still unbiased: exact propensities


def test_noise_in_the_simulated_outcomes_is_counted_not_used() -> None:
    sim = simulate(3, 2000)
    rep = ope.evaluate(sim.records, sim.events, ["greedy"])
    conversions = (
        sum(e.outcome == "conversion" and e.event_id.startswith("c") for e in sim.events)
        - sim.noise["duplicate"]
    )
    assert rep.join.matched == conversions
    assert rep.join.ignored == {k: v for k, v in sim.noise.items() if v}
    assert rep.join.outcomes == len(sim.events)
    assert rep.mean_reward == pytest.approx(conversions / 2000)


# ---------------------------------------------------------------------------------------------
# the join, exclusions and policies, by hand


def _rec(did: str, ts: int, served: str | None = "x", **kw: object) -> DecisionRecord:
    """A record over candidates x (priority 0.3) and y (0.2), eps 0.2; ``kw`` overrides."""
    r = ope.epsilon_greedy_record(did, ts, [("x", 0.3, 1.0), ("y", 0.1, 2.0)], 0.2, served="x")
    if served != "x":
        kw = {"served": served, "served_probability": 0.1 if served == "y" else 0.5, **kw}
    return msgspec.structs.replace(r, **kw)


def test_join_window_and_unmatched_outcomes() -> None:
    d1, d2 = _rec("d1", T0), _rec("d2", T0)
    conv = functools.partial(_outcome, did="d1", action="x", kind="conversion")
    evs = [
        conv("e1", ts=T0 + DAY, value=3.0),
        conv("e2", ts=T0 + 2 * DAY, value=4.5),
        conv("e1", ts=T0 + DAY, value=3.0),  # the same event again
        conv("e3", ts=T0 + 7 * DAY, value=1.0),  # the window is [ts, ts + 7 d)
        conv("e4", ts=T0 - 1, value=1.0),
        conv("e5", ts=T0 + DAY, value=None),
        _outcome("e6", "d1", "y", T0 + DAY, "conversion", 1.0),
        _outcome("e7", "d1", "x", T0 + DAY, "click", None),
        _outcome("e8", "nope", "x", T0 + DAY, "conversion", 1.0),
        Event(event_id="e9", type="page_view", ts=T0, customer_id="c"),
    ]
    y, stats = ope.join_rewards([d1, d2], evs)
    assert y.tolist() == [1.0, 0.0]
    assert stats == ope.JoinStats(
        outcomes=10,
        matched=3,
        ignored={"duplicate": 1, "late": 1, "before_decision": 1, "not_served_action": 1,
                 "not_conversion": 1, "unknown_decision": 1, "not_an_outcome": 1},
    )  # fmt: skip
    y, stats = ope.join_rewards([d1, d2], evs, reward="value")
    assert y.tolist() == [7.5, 0.0]
    assert stats.matched == 2 and stats.ignored["no_value"] == 1
    y, stats = ope.join_rewards([d1, d2], evs, window_ms=DAY, reward="value")
    assert y.tolist() == [0.0, 0.0] and stats.ignored["late"] == 4


def test_records_without_a_choice_are_excluded_and_counted() -> None:
    good = [_rec(f"g{i}", T0, served="x" if i % 2 else "y") for i in range(6)]
    bad = [
        _rec("f", T0, selection="fallback", served_probability=1.0),
        _rec("n", T0, selection="none", served=None, served_probability=1.0),
        _rec("e", T0, candidates=[]),
        _rec("s", T0, served="z"),
        _rec("p", T0, served_probability=0.0),
        good[0],
    ]
    conv = _outcome("e1", "f", "x", T0 + 1, "conversion", None)
    rep = ope.evaluate([*good, *bad], [conv], ["uniform", "action:y"])
    assert (rep.decisions, rep.used) == (12, 6)
    assert rep.excluded == {
        "selection:fallback": 1, "selection:none": 1, "no_candidates": 1,
        "served_not_candidate": 1, "bad_probability": 1, "duplicate_decision": 1,
    }  # fmt: skip
    assert rep.join.ignored == {"unknown_decision": 1}
    assert {e.n for e in rep.estimates} == {6}
    assert rep.not_applicable == {"uniform": 0, "action:y": 0}


def test_target_policies() -> None:
    r = _rec("d", T0)  # priorities: x 0.3, y 0.2
    unordered = msgspec.structs.replace(r, candidates=r.candidates[::-1])
    assert ope.greedy(r) == [1.0, 0.0] and ope.greedy(unordered) == [0.0, 1.0]
    assert ope.uniform(r) == [0.5, 0.5]
    assert ope.logged(r) == [0.9, 0.1]
    assert ope.parse_policy("action:y")(r) == [0.0, 1.0]
    assert ope.parse_policy("action:z")(r) is None
    for bad in ("action:", "best", ""):
        with pytest.raises(ValueError, match="unknown policy"):
            ope.parse_policy(bad)
    rep = ope.evaluate([r, _rec("d2", T0, candidates=r.candidates[:1])], [], ["action:y"])
    assert rep.not_applicable == {"action:y": 1} and rep.estimates[0].n == 1
    with pytest.raises(ValueError, match="level"):
        ope.evaluate([r], [], level=1.0)


def test_a_policy_the_log_never_served_has_no_snips_estimate() -> None:
    rs = [_rec(f"d{i}", T0, served="x") for i in range(5)]
    est = _by(ope.evaluate(rs, [], ["action:y"]))
    assert est["action:y", "ips"].value == 0.0
    assert (est["action:y", "ips"].ess, est["action:y", "ips"].max_weight) == (0.0, 0.0)
    assert est["action:y", "dr"].value == pytest.approx(0.1)  # the model alone: q(y)
    assert np.isnan(est["action:y", "snips"].value)


# ---------------------------------------------------------------------------------------------
# the command, through the real entry point


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Sim]:
    d = tmp_path_factory.mktemp("ope")
    sim = simulate(11, 3000)
    fallback = _rec("fb", T0, selection="fallback", served_probability=1.0)
    dec, out = d / "decisions.jsonl", d / "events.jsonl"
    dec.write_bytes(b"\n".join(encode_decision(r) for r in [*sim.records, fallback]) + b"\n")
    other = Event(event_id="pv", type="page_view", ts=T0, customer_id="c")
    out.write_bytes(b"\n".join(encode_event(e) for e in [other, *sim.events]) + b"\n")
    return dec, out, sim


def test_cli_table(logs: tuple[Path, Path, Sim]) -> None:
    dec, out, _ = logs
    res = nextbest_cli("evaluate-policy", str(dec), "--outcomes", str(out), env={})
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["policy", "estimator", "estimate", "95%"]
    rows = {(ln.split()[0], ln.split()[1]) for ln in lines[1:10]}
    assert rows == {(p, e) for p in ("greedy", "uniform", "logging") for e in ope.ESTIMATORS}
    assert "3,001 read, 3,000 used, excluded: selection:fallback 1;" in res.stdout
    assert "other events skipped: 1" in res.stdout
    assert res.stderr == ""


def test_cli_json_matches_the_library(logs: tuple[Path, Path, Sim]) -> None:
    dec, out, sim = logs
    args = ["--policy", "action:bundle", "--policy", "greedy", "--reward", "value"]
    res = nextbest_cli(
        "evaluate-policy", str(dec), "--outcomes", str(out), *args, "--window", "3d", "--json",
        env={},
    )  # fmt: skip
    doc = json.loads(res.stdout)
    want = ope.evaluate(
        sim.records, sim.events, ["action:bundle", "greedy"], window_ms=3 * DAY, reward="value"
    )
    assert [(e["policy"], e["estimator"]) for e in doc["estimates"]] == [
        (e.policy, e.estimator) for e in want.estimates
    ]
    for got, e in zip(doc["estimates"], want.estimates, strict=True):
        assert got["value"] == pytest.approx(e.value, rel=1e-12)
        assert (got["low"], got["high"], got["n"]) == pytest.approx((e.low, e.high, e.n))
    assert doc["excluded"] == {"selection:fallback": 1}
    assert doc["join"]["matched"] == want.join.matched and doc["join"]["skipped_events"] == 1
    assert doc["rejected"] == {"decisions": {}, "outcomes": {}}
    assert (doc["window_ms"], doc["reward"], doc["level"]) == (3 * DAY, "value", 0.95)


def test_cli_bad_input(logs: tuple[Path, Path, Sim], tmp_path: Path) -> None:
    dec, out, _ = logs
    missing = tmp_path / "nope.jsonl"
    for argv in ([str(missing), "--outcomes", str(out)], [str(dec), "--outcomes", str(missing)]):
        res = nextbest_cli("evaluate-policy", *argv, env={}, check=False)
        assert res.returncode == 2 and f"no such file: {missing}" in res.stderr
    res = nextbest_cli(
        "evaluate-policy", str(dec), "--outcomes", str(out), "--policy", "best", env={},
        check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "unknown policy 'best'" in res.stderr
    for flag, value in (("--window", "0"), ("--level", "95"), ("--reward", "clicks")):
        res = nextbest_cli(
            "evaluate-policy", str(dec), "--outcomes", str(out), flag, value, env={}, check=False
        )
        assert res.returncode == 2 and f"argument {flag}" in res.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"decision_id": \n[1]\n{"type": "page_view"}\n')
    res = nextbest_cli("evaluate-policy", str(garbage), "--outcomes", str(out), env={}, check=False)
    assert res.returncode == 2 and f"no decision records in {garbage}" in res.stderr


def test_cli_counts_garbage_lines(logs: tuple[Path, Path, Sim], tmp_path: Path) -> None:
    dec, out, _ = logs
    bad_dec, bad_out = tmp_path / "d.jsonl", tmp_path / "o.jsonl"
    bad_dec.write_bytes(dec.read_bytes() + b'not json at all\n{"type": "decision"}\n')
    bad_out.write_bytes(b'{"type": "decision_outcome"\n' + out.read_bytes())
    res = nextbest_cli(
        "evaluate-policy", str(bad_dec), "--outcomes", str(bad_out), "--json", env={}
    )
    doc = json.loads(res.stdout)
    assert doc["rejected"] == {
        "decisions": {"invalid_json": 1, "invalid_decision": 1},
        "outcomes": {"invalid_json": 1},
    }
    assert doc["decisions"] == 3001
    assert f"{bad_dec}: 2 decision lines rejected (first: line 3002: invalid_json" in res.stderr
    assert f"{bad_out}: 1 outcome line rejected (first: line 1: invalid_json" in res.stderr

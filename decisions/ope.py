"""Off-policy evaluation: what another next-best-action policy would have earned, from the log.

Long on purpose (the estimators, the join and the policies in one place). Estimators, formulas,
intervals and what the tests check: the README, "Next best action", "Off-policy evaluation".

Examples
--------
>>> log = [epsilon_greedy_record(f"d{i}", 0, [("a", 0.5, 1.0), ("b", 0.2, 1.0)], 0.5,
...                              served="a" if i % 4 else "b") for i in range(8)]
>>> log[0].served, log[0].served_probability, log[1].served_probability
('b', 0.25, 0.75)
>>> from schemas.events import decode_event
>>> ev = decode_event(b'{"event_id":"e1","type":"decision_outcome","ts":1000,"customer_id":"1",'
...                   b'"decision_id":"d1","action_id":"a","outcome":"conversion"}')
>>> rep = evaluate(log, [ev], ["greedy", "uniform"])
>>> rep.mean_reward, rep.join.matched
(0.125, 1)
>>> for e in rep.estimates[:3]:
...     print(e.policy, e.estimator, f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]", e.n, e.ess)
greedy ips 0.167 [-0.160, 0.493] 8 6.0
greedy snips 0.167 [-0.132, 0.465] 8 6.0
greedy dr 0.167 [-0.183, 0.516] 8 6.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from schemas.decisions import Candidate, DecisionRecord
from schemas.events import Event

Array = npt.NDArray[np.float64]
Reward = Literal["conversion", "value"]
#: The reward definitions: a conversion (0/1), or the conversions' summed ``value``.
REWARDS: Final = ("conversion", "value")
ESTIMATORS: Final = ("ips", "snips", "dr")
DAY_MS: Final = 86_400_000
DEFAULT_WINDOW_MS: Final = 7 * DAY_MS
#: Selections whose record says nothing about the policy (no choice was made).
EXCLUDED_SELECTIONS: Final = frozenset({"fallback", "none"})
#: A target policy: the probability of each of a record's candidates (in their order), or
#: ``None`` when it does not apply to the record.
Policy = Callable[[DecisionRecord], list[float] | None]


def epsilon_greedy_record(
    decision_id: str,
    ts: int,
    candidates: Sequence[tuple[str, float, float]],
    epsilon: float,
    *,
    served: str,
    selection: str = "greedy",
) -> DecisionRecord:
    """A record as an epsilon-greedy logging policy writes it, from ``(action_id, propensity,
    value)`` triples (weight 1): ranked by priority, P(a) = (1 - eps) [a is first] + eps / K.

    >>> r = epsilon_greedy_record("d", 0, [("x", 0.1, 1.0), ("y", 0.2, 1.0)], 0.2, served="y")
    >>> [c.action_id for c in r.candidates], r.served_probability
    (['y', 'x'], 0.9)
    """
    k = len(candidates)
    ranked = sorted(candidates, key=lambda c: -c[1] * c[2])
    cands = [
        Candidate(
            action_id=a,
            propensity=p,
            source="model",
            value=v,
            weight=1.0,
            priority=p * v,
            probability=(1 - epsilon) * (j == 0) + epsilon / k,
        )
        for j, (a, p, v) in enumerate(ranked)
    ]
    prob = next(c.probability for c in cands if c.action_id == served)
    return DecisionRecord(
        decision_id=decision_id,
        ts=ts,
        key="c:0",
        channel="web",
        policy="epsilon_greedy",
        epsilon=epsilon,
        served=served,
        served_probability=prob,
        selection=selection,
        candidates=cands,
        features={},
    )


# ---------------------------------------------------------------------------------------------
# records and rewards


def usable(records: Iterable[DecisionRecord]) -> tuple[list[DecisionRecord], dict[str, int]]:
    """The records an evaluation can use, and the others counted by reason: ``selection:<s>``
    (fallback, none), ``no_candidates``, ``served_not_candidate``, ``bad_probability``
    (served probability not in (0, 1]) and ``duplicate_decision`` (the first is kept).

    >>> ok = epsilon_greedy_record("d", 0, [("x", 0.1, 1.0)], 0.2, served="x")
    >>> usable([ok, ok])[1]
    {'duplicate_decision': 1}
    """
    out: list[DecisionRecord] = []
    excluded: Counter[str] = Counter()
    seen: set[str] = set()
    for r in records:
        why = _exclusion(r, seen)
        if why is None:
            seen.add(r.decision_id)
            out.append(r)
        else:
            excluded[why] += 1
    return out, dict(excluded)


def _exclusion(r: DecisionRecord, seen: set[str]) -> str | None:
    if r.selection in EXCLUDED_SELECTIONS:
        return f"selection:{r.selection}"
    if not r.candidates:
        return "no_candidates"
    if all(c.action_id != r.served for c in r.candidates):
        return "served_not_candidate"
    if not 0.0 < r.served_probability <= 1.0:
        return "bad_probability"
    if r.decision_id in seen:
        return "duplicate_decision"
    return None


@dataclass(frozen=True)
class JoinStats:
    """What became of the outcome events: ``matched`` made a reward; ``ignored`` by reason:
    ``not_an_outcome``, ``duplicate`` (event id seen), ``unknown_decision`` (no usable record
    with that id), ``not_conversion``, ``not_served_action``, ``before_decision``, ``late``
    (at or after the window's end), ``no_value`` (a value reward without a ``value``)."""

    outcomes: int
    matched: int
    ignored: dict[str, int]


def join_rewards(
    records: Sequence[DecisionRecord],
    outcomes: Iterable[Event],
    *,
    window_ms: int = DEFAULT_WINDOW_MS,
    reward: Reward = "conversion",
) -> tuple[Array, JoinStats]:
    """Each record's reward (aligned with ``records``): 1.0 when a conversion of its served
    action has ``ts <= t < ts + window_ms``, else 0.0; for ``reward="value"`` the sum of those
    conversions' ``value``. See :class:`JoinStats` for the outcomes not used.

    >>> r = epsilon_greedy_record("d", 0, [("x", 0.1, 1.0)], 0.2, served="x")
    >>> e = Event(event_id="e", type="decision_outcome", ts=DAY_MS, customer_id="c",
    ...           decision_id="d", action_id="x", outcome="conversion", value=3.0)
    >>> join_rewards([r], [e, e])
    (array([1.]), JoinStats(outcomes=2, matched=1, ignored={'duplicate': 1}))
    >>> join_rewards([r], [e], window_ms=DAY_MS, reward="value")[1].ignored
    {'late': 1}
    """
    by_id = {r.decision_id: i for i, r in reversed(list(enumerate(records)))}
    out = np.zeros(len(records))
    ignored: Counter[str] = Counter()
    seen: set[str] = set()
    n = matched = 0
    for ev in outcomes:
        n += 1
        i = by_id.get(ev.decision_id or "")
        why = _unmatched(ev, None if i is None else records[i], window_ms, seen)
        if why is None and reward == "value" and ev.value is None:
            why = "no_value"
        if why is not None or i is None:
            ignored[why or "unknown_decision"] += 1
            continue
        matched += 1
        if reward == "value":
            out[i] += ev.value or 0.0
        else:
            out[i] = 1.0
    return out, JoinStats(n, matched, dict(ignored))


def _unmatched(ev: Event, r: DecisionRecord | None, window_ms: int, seen: set[str]) -> str | None:
    if ev.type != "decision_outcome":
        return "not_an_outcome"
    if ev.event_id in seen:
        return "duplicate"
    seen.add(ev.event_id)
    if r is None:
        return "unknown_decision"
    if ev.outcome != "conversion":
        return "not_conversion"
    if ev.action_id != r.served:
        return "not_served_action"
    if ev.ts < r.ts:
        return "before_decision"
    if ev.ts >= r.ts + window_ms:
        return "late"
    return None


# ---------------------------------------------------------------------------------------------
# target policies


def greedy(r: DecisionRecord) -> list[float]:
    """All mass on the highest-priority candidate (the first of equals)."""
    best = max(range(len(r.candidates)), key=lambda j: r.candidates[j].priority)
    return [float(j == best) for j in range(len(r.candidates))]


def uniform(r: DecisionRecord) -> list[float]:
    """1/K on each of the K candidates."""
    return [1.0 / len(r.candidates)] * len(r.candidates)


def logged(r: DecisionRecord) -> list[float]:
    """The logging policy itself (the logged probabilities)."""
    return [c.probability for c in r.candidates]


def always(action_id: str) -> Policy:
    """Always ``action_id``; not applicable (``None``) where it is not a candidate."""

    def policy(r: DecisionRecord) -> list[float] | None:
        ids = [c.action_id for c in r.candidates]
        return [float(a == action_id) for a in ids] if action_id in ids else None

    return policy


POLICIES: Final[dict[str, Policy]] = {"greedy": greedy, "uniform": uniform, "logging": logged}


def parse_policy(spec: str) -> Policy:
    """The policy named ``greedy``, ``uniform``, ``logging`` or ``action:<id>``.

    >>> parse_policy("action:x") is not None, parse_policy("uniform") is uniform
    (True, True)
    >>> parse_policy("best")
    Traceback (most recent call last):
    ...
    ValueError: unknown policy 'best': expected greedy, uniform, logging or action:ID
    """
    if spec in POLICIES:
        return POLICIES[spec]
    if spec.startswith("action:") and len(spec) > len("action:"):
        return always(spec.removeprefix("action:"))
    raise ValueError(f"unknown policy {spec!r}: expected greedy, uniform, logging or action:ID")


# ---------------------------------------------------------------------------------------------
# estimators


@dataclass(frozen=True)
class Terms:
    """Per-decision quantities for one policy over the records it applies to: importance
    ``weight`` pi(a_i)/mu(a_i), ``reward`` r_i, ``direct`` sum_a pi(a) q(a) and ``model``
    q(a_i); ``not_applicable`` counts the records the policy skipped."""

    weight: Array
    reward: Array
    direct: Array
    model: Array
    not_applicable: int


def policy_terms(
    records: Sequence[DecisionRecord], rewards: Array, policy: Policy, reward: Reward
) -> Terms:
    """The :class:`Terms` of ``policy`` on usable ``records`` with their ``rewards``."""
    rows: list[tuple[float, float, float, float]] = []
    skipped = 0
    for r, y in zip(records, rewards, strict=True):
        pi = policy(r)
        if pi is None:
            skipped += 1
            continue
        q = [c.propensity * (c.value if reward == "value" else 1.0) for c in r.candidates]
        j = next(k for k, c in enumerate(r.candidates) if c.action_id == r.served)
        direct = sum(p * qa for p, qa in zip(pi, q, strict=True))
        rows.append((pi[j] / r.served_probability, float(y), direct, q[j]))
    cols = np.array(rows, dtype=np.float64).reshape(-1, 4).T
    return Terms(cols[0], cols[1], cols[2], cols[3], skipped)


def _mean_ci(x: Array, z: float) -> tuple[float, float, float]:
    """Mean and its normal-approximation interval (NaN where undefined)."""
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    half = z * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return m, m - half, m + half


def ips(t: Terms, z: float) -> tuple[float, float, float]:
    """Inverse propensity scoring: mean of w r, with its interval."""
    return _mean_ci(t.weight * t.reward, z)


def snips(t: Terms, z: float) -> tuple[float, float, float]:
    """Self-normalised IPS, sum(w r) / sum(w), with the delta-method interval
    z sqrt(sum(w^2 (r - V)^2)) / sum(w). NaN when no weight is positive."""
    total = float(t.weight.sum())
    if total <= 0.0:
        return math.nan, math.nan, math.nan
    v = float((t.weight * t.reward).sum()) / total
    se = float(np.sqrt(((t.weight * (t.reward - v)) ** 2).sum())) / total
    half = z * se if len(t.weight) > 1 else math.nan
    return v, v - half, v + half


def dr(t: Terms, z: float) -> tuple[float, float, float]:
    """Doubly robust: mean of sum_a pi(a) q(a) + w (r - q(a_i)), with its interval."""
    return _mean_ci(t.direct + t.weight * (t.reward - t.model), z)


_ESTIMATORS: Final = {"ips": ips, "snips": snips, "dr": dr}


def _z(level: float) -> float:
    """The normal quantile of a two-sided interval at ``level`` (e.g. 1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Estimate:
    """One policy's value by one estimator, with the interval [low, high] at the report's
    level, ``n`` decisions, the effective sample size and the largest importance weight."""

    policy: str
    estimator: str
    value: float
    low: float
    high: float
    n: int
    ess: float
    max_weight: float


def estimates(policy: str, t: Terms, level: float = 0.95) -> list[Estimate]:
    """IPS, SNIPS and DR estimates of ``policy`` from its :class:`Terms`."""
    z = _z(level)
    w = t.weight
    sq = float((w**2).sum())
    ess = float(w.sum()) ** 2 / sq if sq > 0 else 0.0
    top = float(w.max()) if len(w) else math.nan
    return [
        Estimate(policy, name, *fn(t, z), n=len(w), ess=ess, max_weight=top)
        for name, fn in _ESTIMATORS.items()
    ]


@dataclass(frozen=True)
class Report:
    """An evaluation: ``decisions`` read, ``used``, ``excluded`` by reason, the outcome join,
    the log's ``mean_reward``, the estimates, and per policy the records it did not apply to."""

    decisions: int
    used: int
    excluded: dict[str, int]
    join: JoinStats
    mean_reward: float
    estimates: list[Estimate]
    not_applicable: dict[str, int]
    window_ms: int
    reward: str
    level: float


def evaluate(
    records: Iterable[DecisionRecord],
    outcomes: Iterable[Event],
    policies: Sequence[str] = ("greedy", "uniform", "logging"),
    *,
    window_ms: int = DEFAULT_WINDOW_MS,
    reward: Reward = "conversion",
    level: float = 0.95,
) -> Report:
    """Evaluate the named ``policies`` (see :func:`parse_policy`) on a decision log and its
    outcome events. ``ValueError`` for an unknown policy, reward or level."""
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    _z(level)
    named = {spec: parse_policy(spec) for spec in policies}
    records = list(records)
    ok, excluded = usable(records)
    y, join = join_rewards(ok, outcomes, window_ms=window_ms, reward=reward)
    out: list[Estimate] = []
    skipped: dict[str, int] = {}
    for spec, policy in named.items():
        t = policy_terms(ok, y, policy, reward)
        out.extend(estimates(spec, t, level))
        skipped[spec] = t.not_applicable
    mean = float(y.mean()) if len(y) else math.nan
    return Report(
        len(records), len(ok), excluded, join, mean, out, skipped, window_ms, reward, level
    )

"""Online models: features, prior, progressive validation, metrics, drift, checkpoints, pickling."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.profile import ingest, new_state, view
from models import online
from models.evaluation import brier, log_loss, roc_auc
from models.features import FEATURE_NAMES, feature_vector, state_features
from models.labels import Example
from models.online import (
    PIPELINES,
    CheckpointError,
    OnlineModel,
    checkpoint_meta,
    make_pipeline,
)
from models.prior import prior_churn, prior_propensity
from schemas import Event

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


# ------------------------------------------------------------------------------------------------
# Synthetic examples: the label follows a logistic function of a few features.


def synthetic(n: int, seed: int, target: str = "churn") -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        activity = rng.expovariate(1.0)
        purchases = int(rng.expovariate(0.5) * activity)
        x = dict.fromkeys(FEATURE_NAMES, 0.0)
        x["log_purchases_total"] = math.log1p(purchases)
        x["never_purchased"] = float(purchases == 0)
        if purchases:
            x["log_days_since_last_purchase"] = math.log1p(rng.expovariate(activity / 30 + 0.01))
        x["log_days_since_last_seen"] = math.log1p(rng.expovariate(activity / 10 + 0.01))
        x["log_sessions_30d"] = math.log1p(int(activity * 5 * rng.random()))
        x["log_page_views_7d"] = math.log1p(int(activity * 20 * rng.random()))
        x["log_active_days"] = math.log1p(rng.uniform(0, 365))
        z = (
            -1.5
            + 1.2 * x["log_purchases_total"]
            - 0.6 * x["log_days_since_last_seen"]
            + 0.5 * x["log_sessions_30d"]
        )
        y = int(rng.random() < 1.0 / (1.0 + math.exp(-z)))
        out.append(Example(target, f"c:{i}", T0 + i * 1000, T0 + i * 1000 + 1, x, y))
    return out


# ------------------------------------------------------------------------------------------------
# Features


def test_feature_vector_is_the_render_of_the_profile() -> None:
    s = new_state("c:42")
    events = [
        Event(event_id="1", type="page_view", ts=T0, customer_id="42", session_id="s1"),
        Event(event_id="2", type="add_to_cart", ts=T0 + 1000, customer_id="42", price=5.0,
              quantity=2, category="toys", session_id="s1"),
        Event(event_id="3", type="purchase", ts=T0 + 2000, customer_id="42", total=10.0,
              session_id="s1"),
        Event(event_id="4", type="add_to_cart", ts=T0 + 3000, customer_id="42", price=7.0,
              category="books", session_id="s1"),
    ]  # fmt: skip
    for e in events:
        assert ingest(s, e, lateness_ms=600_000) == "applied"
    as_of = T0 + 2 * DAY
    f = feature_vector(view(s), as_of)
    assert tuple(f) == FEATURE_NAMES
    # the dataflow computes them straight from the state: the same values
    assert state_features(s, as_of) == pytest.approx(f)
    assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
    assert f["never_purchased"] == 0.0
    assert f["log_purchases_total"] == pytest.approx(math.log1p(1))
    assert f["log_revenue_total"] == pytest.approx(math.log1p(10.0))
    assert f["log_avg_order_value"] == pytest.approx(math.log1p(10.0))
    assert f["log_days_since_last_purchase"] == pytest.approx(math.log1p(2.0), abs=1e-4)
    assert f["log_cart_items"] == pytest.approx(math.log1p(1))
    assert f["log_cart_value"] == pytest.approx(math.log1p(7.0))
    assert f["cart_abandoned"] == 1.0
    assert f["n_top_categories"] == 2.0
    assert f["log_add_to_carts_7d"] == pytest.approx(math.log1p(2))
    assert "log_add_to_carts_1h" not in f  # hour windows are no model input
    # as of a later time: windows empty, recency grows, lifetime values stay
    later = feature_vector(view(s), T0 + 100 * DAY)
    assert later["log_purchases_90d"] == 0.0 and later["log_purchases_total"] > 0
    assert later["log_days_since_last_seen"] > f["log_days_since_last_seen"]


def test_feature_vector_of_an_empty_profile() -> None:
    f = feature_vector(view(new_state("c:new")), T0)
    assert tuple(f) == FEATURE_NAMES
    assert f["never_purchased"] == 1.0
    assert sum(f.values()) == 1.0


def test_negative_net_revenue_is_clamped() -> None:
    s = new_state("c:1")
    ingest(s, Event(event_id="r", type="refund", ts=T0, customer_id="1", total=50.0), 0)
    f = feature_vector(view(s), T0 + 1)
    assert f["log_revenue_total"] == 0.0 and f["log_revenue_7d"] == 0.0


# ------------------------------------------------------------------------------------------------
# Prior

LOGS = st.floats(0.0, 12.0)


@given(LOGS, LOGS, LOGS, st.floats(0.0, 3.0))
def test_prior_is_monotone_and_inside_unit_interval(r: float, q: float, n: float, d: float) -> None:
    def f(r: float, q: float, n: float) -> dict[str, float]:
        return {
            "log_days_since_last_seen": r,
            "log_days_since_last_purchase": q,
            "log_purchases_total": n,
            "never_purchased": 0.0 if n > 0 else 1.0,
        }

    base = f(r, q, n + 0.01)
    for prior in (prior_churn, prior_propensity):
        assert 0.0 < prior(base) < 1.0
    # longer since the last visit or purchase: churn up, propensity down
    for worse in (f(r + d, q, n + 0.01), f(r, q + d, n + 0.01)):
        assert prior_churn(worse) >= prior_churn(base)
        assert prior_propensity(worse) <= prior_propensity(base)
    # more purchases: churn down, propensity up
    more = f(r, q, n + 0.01 + d)
    assert prior_churn(more) <= prior_churn(base)
    assert prior_propensity(more) >= prior_propensity(base)


def test_prior_is_strictly_monotone_in_the_usual_range() -> None:
    days = [0, 1, 7, 30, 90, 365]
    churn = [prior_churn({"log_days_since_last_seen": math.log1p(d)}) for d in days]
    prop = [prior_propensity({"log_days_since_last_seen": math.log1p(d)}) for d in days]
    assert churn == sorted(churn) and len(set(churn)) == len(churn)
    assert prop == sorted(prop, reverse=True) and len(set(prop)) == len(prop)
    # a buyer beats someone who never bought
    buyer = {"log_purchases_total": math.log1p(2), "log_days_since_last_purchase": math.log1p(5)}
    never = {"never_purchased": 1.0}
    assert prior_propensity(buyer) > prior_propensity(never)
    assert prior_churn(buyer) < prior_churn(never)


# ------------------------------------------------------------------------------------------------
# Pipelines, progressive validation, prior/model switch


def test_make_pipeline_names() -> None:
    for name in PIPELINES:
        assert make_pipeline(name, seed=1) is not None
    with pytest.raises(ValueError, match="'xgboost'"):
        make_pipeline("xgboost")
    with pytest.raises(ValueError, match="'nope'"):
        OnlineModel("churn", pipeline="nope")


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_first_example_is_scored_by_an_untrained_model(pipeline: str) -> None:
    m = OnlineModel("churn", pipeline=pipeline)
    ex = synthetic(1, seed=3)[0]
    assert m.learn(ex) == 0.5  # nothing learned yet: the scorer knows nothing
    assert m.examples_seen == 1


def test_learn_scores_before_learning() -> None:
    m = OnlineModel("churn")
    examples = synthetic(300, seed=4)
    for ex in examples:
        before = m.score(ex.features)
        shadow = pickle.loads(pickle.dumps(m))
        assert m.learn(ex) == before == shadow.score(ex.features)
        assert m.score(ex.features) != before  # it learned afterwards


def test_prior_until_min_examples_then_model() -> None:
    m = OnlineModel("propensity", min_examples=10)
    x = {"log_purchases_total": 1.0, "log_days_since_last_seen": 2.0}
    for i, ex in enumerate(synthetic(12, seed=5, target="propensity")):
        p, source = m.predict(x)
        if i < 10:
            assert (p, source) == (prior_propensity(x), "prior")
            assert m.metrics_snapshot()["source"] == "prior"
        else:
            assert source == "model" and p == m.score(x)
            assert m.metrics_snapshot()["source"] == "model"
        m.learn(ex)
    assert OnlineModel("ltv").predict({})[0] == 0.5  # a target without a heuristic


def test_a_model_that_saw_one_label_only_answers_with_the_prior() -> None:
    """A history shorter than the churn horizon: only purchase-resolved churn = 0 labels."""
    m = OnlineModel("churn", min_examples=100)
    gone = {"log_days_since_last_seen": 5.6, "log_days_since_last_purchase": 5.7,
            "log_purchases_total": 1.0}  # fmt: skip
    for ex in synthetic(300, seed=8):
        m.learn(Example("churn", ex.key, ex.snapshot_ts, ex.label_ts, ex.features, 0))
    p, source = m.predict(gone)
    assert source == "prior" and p == prior_churn(gone) and p > 0.5
    assert m.metrics_snapshot()["source"] == "prior"
    for ex in synthetic(9, seed=9):  # 9 < 100 // 10 churned: still not enough
        m.learn(Example("churn", ex.key, ex.snapshot_ts, ex.label_ts, ex.features, 1))
    assert m.predict(gone)[1] == "prior"
    m.learn(Example("churn", "c:x", 0, 0, gone, 1))
    assert m.predict(gone)[1] == "model"


def test_learn_rejects_other_targets_and_labels() -> None:
    m = OnlineModel("churn")
    ex = synthetic(1, seed=6)[0]
    with pytest.raises(ValueError, match="propensity"):
        m.learn(Example("propensity", "c:1", 0, 0, ex.features, 1))
    with pytest.raises(ValueError, match="label"):
        m.learn(Example("churn", "c:1", 0, 0, ex.features, 2))
    assert m.examples_seen == 0


def test_logreg_learns_a_logistic_truth() -> None:
    m = OnlineModel("churn", min_examples=500)
    for ex in synthetic(3000, seed=7):
        m.learn(ex)
    test = synthetic(3000, seed=8)
    labels = [e.label for e in test]
    probs = [m.predict(e.features)[0] for e in test]
    auc = roc_auc(labels, probs)
    assert auc > 0.75
    snap = m.metrics_snapshot()
    assert snap["roc_auc"] > 0.75  # the rolling, progressive-validation estimate agrees
    assert log_loss(labels, probs) < log_loss(labels, [0.5] * len(labels))
    assert snap["drifts"] == 0  # a stationary stream raises no alarm


# ------------------------------------------------------------------------------------------------
# Metrics and drift


def test_metrics_snapshot_counts_window_and_history() -> None:
    m = OnlineModel("churn", window=100, history_every=10)
    examples = synthetic(700, seed=9)
    scored = [(ex.label, m.learn(ex)) for ex in examples]
    snap = m.metrics_snapshot()
    assert snap["examples_seen"] == 700
    assert snap["positives"] == sum(y for y, _ in scored)
    assert snap["negatives"] == 700 - snap["positives"]
    assert snap["window"] == 100 and snap["label_ts"] == examples[-1].label_ts
    ys, ps = zip(*scored[-100:], strict=True)
    assert snap["roc_auc"] == pytest.approx(roc_auc(ys, ps), abs=1e-6)
    assert snap["log_loss"] == pytest.approx(log_loss(ys, ps), abs=1e-6)
    assert snap["brier"] == pytest.approx(brier(ys, ps), abs=1e-6)
    assert len(snap["history"]) == 50  # bounded: the last 50 of 70 snapshots
    assert [h["examples_seen"] for h in snap["history"]] == list(range(210, 701, 10))
    assert set(snap) >= {"version", "drifts", "history", "roc_auc", "log_loss", "brier"}
    assert msgspec.json.decode(msgspec.json.encode(snap)) == snap  # JSON-serialisable


def test_metrics_before_any_example_and_with_one_class() -> None:
    m = OnlineModel("churn")
    snap = m.metrics_snapshot()
    assert (snap["roc_auc"], snap["log_loss"], snap["brier"]) == (None, None, None)
    ex = synthetic(1, seed=1)[0]
    m.learn(Example("churn", "c:1", 0, 0, ex.features, 1))
    snap = m.metrics_snapshot()
    assert snap["roc_auc"] is None and snap["log_loss"] == pytest.approx(math.log(2))


def test_drift_is_detected_and_recorded() -> None:
    """The concept flips on day 60: the daily mean error rises, ADWIN notices within days."""
    m = OnlineModel("churn")
    rng = random.Random(10)
    for day in range(120):
        for i in range(50):
            v = rng.random()
            y = int((v > 0.5) != (day >= 60))
            m.learn(Example("churn", "c:1", 0, T0 + day * DAY + i * 1000, {"v": v}, y))
    snap = m.metrics_snapshot()
    assert snap["drifts"] >= 1
    first_seen, first_ts = snap["drift_events"][0]
    assert 60 < first_ts // DAY - T0 // DAY <= 80
    assert first_seen == (first_ts - T0) // DAY * 50 + 1  # the example that closed the day


def test_bursty_label_mix_within_days_is_no_drift() -> None:
    """Positives early in a day, negatives in a burst at its end (how labels arrive): a stable
    model sees no drift over a year."""
    m = OnlineModel("propensity")
    rng = random.Random(3)
    for day in range(365):
        exs = []
        for _ in range(60):
            v = rng.random()
            exs.append((int(rng.random() < v), v))
        exs.sort(key=lambda e: -e[0])  # positives first, then the burst of negatives
        for i, (y, v) in enumerate(exs):
            m.learn(Example("propensity", "c:1", 0, T0 + day * DAY + i * 1000, {"v": v}, y))
    assert m.metrics_snapshot()["drifts"] == 0


# ------------------------------------------------------------------------------------------------
# Checkpoints


def trained(pipeline: str = "logreg", n: int = 400, seed: int = 42) -> OnlineModel:
    m = OnlineModel("churn", pipeline=pipeline, seed=seed, min_examples=100, history_every=50)
    for ex in synthetic(n, seed=11):
        m.learn(ex)
    return m


def test_checkpoint_round_trip_and_metadata() -> None:
    m = trained()
    data = m.to_checkpoint(version=7, now_ms=T0)
    meta = checkpoint_meta(data)
    assert meta["target"] == "churn" and meta["pipeline"] == "logreg"
    assert meta["version"] == 7 and meta["created_at_ms"] == T0
    assert meta["examples_seen"] == 400 and meta["metrics"]["examples_seen"] == 400
    assert meta["metrics"]["version"] == 7 and len(meta["metrics"]["history"]) == 8
    back = OnlineModel.from_checkpoint(data)
    assert (back.version, back.created_at_ms, back.examples_seen) == (7, T0, 400)
    assert back.metrics_snapshot() == m.metrics_snapshot()
    for ex in synthetic(20, seed=12):
        assert back.predict(ex.features) == m.predict(ex.features)
    assert back.to_checkpoint(7, T0) == data


def test_checkpoint_meta_does_not_unpickle() -> None:
    data = bytearray(trained(n=50).to_checkpoint(1, T0))
    data[-10] ^= 0xFF  # corrupt the payload, not the metadata
    assert checkpoint_meta(bytes(data))["version"] == 1
    with pytest.raises(CheckpointError, match="checksum"):
        OnlineModel.from_checkpoint(bytes(data))


def _forge(payload: bytes, **meta_overrides: object) -> bytes:
    meta = {
        "format": 1,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        **meta_overrides,
    }
    head = msgspec.json.encode(meta)
    return online.MAGIC + struct.pack(">I", len(head)) + head + payload


class Evil:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        import os

        return (os.getcwd, ())


def test_corrupt_or_incompatible_checkpoints_raise_checkpoint_error() -> None:
    good = trained(n=50).to_checkpoint(1, T0)
    n = struct.unpack(">I", good[8:12])[0]
    cases = {
        "empty": b"",
        "garbage": b"not a checkpoint at all",
        "truncated header": good[:10],
        "truncated metadata": good[: 12 + n // 2],
        "truncated payload": good[:-1],
        "extra byte": good + b"\x00",
        "metadata not json": online.MAGIC + struct.pack(">I", 3) + b"{{{" + b"x",
        "other format": _forge(b"\x80\x05N.", format=99),
        "not a state": _forge(pickle.dumps([1, 2, 3])),
        "disallowed global": _forge(pickle.dumps(Evil())),
        "broken pickle": _forge(b"\x80\x05\x8c\x03abc"),
    }
    for name, data in cases.items():
        with pytest.raises(CheckpointError):
            OnlineModel.from_checkpoint(data)
        if name in {"empty", "garbage", "truncated header", "other format"}:
            with pytest.raises(CheckpointError):
                checkpoint_meta(data)
    assert isinstance(CheckpointError("x"), ValueError)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_same_examples_same_checkpoint_bytes(pipeline: str) -> None:
    n = 300 if pipeline != "arf" else 150
    a = trained(pipeline, n=n).to_checkpoint(3, T0)
    b = trained(pipeline, n=n).to_checkpoint(3, T0)
    assert a == b
    # a model restored from a (Bytewax) snapshot midway and trained on writes the same bytes
    m = OnlineModel("churn", pipeline=pipeline, seed=42, min_examples=100, history_every=50)
    examples = synthetic(n, seed=11)
    for ex in examples[: n // 2]:
        m.learn(ex)
    m = pickle.loads(pickle.dumps(m))
    for ex in examples[n // 2 :]:
        m.learn(ex)
    assert m.to_checkpoint(3, T0) == a
    assert OnlineModel.from_checkpoint(a).to_checkpoint(3, T0) == a
    # another seed or more examples: other bytes
    assert trained(pipeline, n=n + 1).to_checkpoint(3, T0) != a


_CHECKPOINT_SCRIPT = """
import hashlib
from tests.test_models import trained
for name in ("logreg", "hat", "arf"):
    data = trained(name, n=120).to_checkpoint(1, 0)
    print(name, hashlib.sha256(data).hexdigest())
"""


def test_checkpoint_bytes_do_not_depend_on_the_process() -> None:
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", _CHECKPOINT_SCRIPT],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    here = "".join(
        f"{name} {hashlib.sha256(trained(name, n=120).to_checkpoint(1, 0)).hexdigest()}\n"
        for name in ("logreg", "hat", "arf")
    )
    assert outputs == {here}


NAMES = st.sampled_from(["a", "bb", "feature_x", "é" * 3, "x" * 300])
TREES = st.recursive(
    st.one_of(NAMES, st.integers(), st.floats(allow_nan=False), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(NAMES, inner, max_size=4)),
    max_leaves=30,
)


def _fresh_strings(obj: object, memo: dict[int, object] | None = None) -> object:
    """An equal object whose strings are all new objects (as after an unpickle).

    Containers shared in ``obj`` stay shared in the copy.
    """
    memo = {} if memo is None else memo
    if isinstance(obj, str):
        return "".join(list(obj))
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, list):
        out: list[object] = []
        memo[id(obj)] = out
        out.extend(_fresh_strings(v, memo) for v in obj)
        return out
    if isinstance(obj, dict):
        d: dict[object, object] = {}
        memo[id(obj)] = d
        for k, v in obj.items():
            d[_fresh_strings(k, memo)] = _fresh_strings(v, memo)
        return d
    return obj


@settings(max_examples=200)
@given(TREES)
def test_canonical_pickle_depends_only_on_values(tree: object) -> None:
    shared: list[object] = [tree]
    obj = {"one": tree, "two": shared, "three": shared}  # shared mutable objects are kept
    data = online._canonical_pickle(obj)
    back = pickle.loads(data)
    assert back == obj and back["two"] is back["three"]
    assert online._canonical_pickle(_fresh_strings(obj)) == data
    assert online._canonical_pickle(back) == data


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_online_model_pickles_and_round_trips(pipeline: str) -> None:
    m = trained(pipeline, n=120)
    back = pickle.loads(pickle.dumps(m))
    assert back.metrics_snapshot() == m.metrics_snapshot()
    for ex in synthetic(10, seed=13):
        assert back.score(ex.features) == m.score(ex.features)
    # and both go on identically
    for ex in synthetic(30, seed=14):
        assert back.learn(ex) == m.learn(ex)
    assert back.to_checkpoint(1, 0) == m.to_checkpoint(1, 0)


# ------------------------------------------------------------------------------------------------
# Batch evaluation


def brute_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.5, 0.7, 1.0])), min_size=2))
def test_roc_auc_matches_pairwise_count_with_ties(pairs: list[tuple[bool, float]]) -> None:
    labels = [int(y) for y, _ in pairs]
    scores = [s for _, s in pairs]
    if 0 < sum(labels) < len(labels):
        assert roc_auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)
    else:
        with pytest.raises(ValueError, match="one class"):
            roc_auc(labels, scores)


def test_log_loss_and_brier_match_their_definitions() -> None:
    labels = [1, 0, 1, 1, 0]
    probs = [0.9, 0.2, 0.6, 0.3, 0.5]
    expected = -sum(
        math.log(p) if y else math.log(1 - p) for y, p in zip(labels, probs, strict=True)
    ) / len(labels)
    assert log_loss(labels, probs) == pytest.approx(expected, rel=1e-12)
    assert brier(labels, probs) == pytest.approx(
        sum((p - y) ** 2 for y, p in zip(labels, probs, strict=True)) / 5, rel=1e-12
    )
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))
    for bad in (([], []), ([1], [0.5, 0.5]), ([2], [0.5]), ([1], [1.5]), ([1], [math.nan])):
        with pytest.raises(ValueError):
            log_loss(*bad)

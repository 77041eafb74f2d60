"""``nextbest evaluate``: the online models against what simulated customers really did.

1. The events file (the simulator's output, which stops at the holdout start) is replayed through
   the full flow, models on, into a fresh temporary Redis (started for the run and removed after;
   the configured or embedded Redis is never touched). Recovery is off.
2. Every customer of the truth file is scored as of the end of the history, ``as_of`` = the newest
   valid event ``ts`` in the file (the holdout start, to within the last event's gap), with the
   final checkpoints. A customer without a stored profile is scored from an empty profile (the
   prior does the work; a model scores it too once it is ready, see ``OnlineModel.ready``).
3. Outcomes from the truth file: ``churn`` is true when ``purchases_in_holdout == 0``,
   ``propensity`` when ``purchases_in_holdout >= 1``.

Per target the report has ``n``, ``positives``, the model's ``roc_auc`` and ``log_loss``, the
``oracle_auc`` (the simulator's Bayes-optimal probability given the latent state:
``churn_probability`` for churn, ``purchase_propensity`` for propensity; both know the traits and
the latent churn day, so they bound what any model of the observable history can reach), the
``recency_auc`` baseline (days since the last purchase for churn, its negative for propensity;
customers who never bought get the largest recency seen, or 0 if none bought),
``btyd_auc``, the buy-till-you-die baseline (BG/NBD expected purchases over the horizon, with
the population parameters the dataflow published, ``btyd_source``: :func:`btyd_scores`),
``calibration`` (observed rate against mean score per score decile: :func:`calibration`),
``ratio`` = (AUC - 0.5) / (oracle AUC - 0.5) (``None`` when the oracle is not above 0.5),
``sources`` (how many scores came from the model and how many from the prior), ``horizon_days``
and, when ``--holdout-days`` is given, ``holdout_days`` and ``horizon_matches``. An AUC is
``None`` when the outcome has only one class.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import orjson
import redis

from features.document import profile_document
from features.profile import LayoutError, ProfileView, from_fields, new_state, view
from features.rfm import RfmBoundaries
from features.store import BOUNDARIES_KEY, profile_key
from models.evaluation import log_loss, roc_auc
from models.targets import REGISTRY
from nextbest.settings import Settings
from schemas.events import parse_ts
from schemas.keys import customer_key
from serving.scoring import ModelSet

__all__ = ["TruthError", "evaluate", "newest_ts", "read_truth", "report_lines"]

PAGE: Final = 1000
#: The simulator's own format: RFC 3339 UTC with milliseconds, which sorts as text.
_FAST_TS: Final = re.compile(rb'"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"')
_ORACLE: Final = {"churn": "churn_probability", "propensity": "purchase_propensity"}


class TruthError(ValueError):
    """The truth file is unusable (not JSONL, or a row without the needed fields)."""


def newest_ts(path: Path) -> int | None:
    """The newest valid event ``ts`` in a JSONL file (epoch ms), ``None`` if there is none."""
    best_text: bytes | None = None
    best_other: int | None = None
    with path.open("rb") as fh:
        for line in fh:
            m = _FAST_TS.search(line)
            if m is not None:
                ts = m.group(1)
                if best_text is None or ts > best_text:
                    best_text = ts
                continue
            try:
                raw = orjson.loads(line).get("ts")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            parsed = parse_ts(raw) if isinstance(raw, (int, str)) else None
            if parsed is not None and (best_other is None or parsed > best_other):
                best_other = parsed
    fast = parse_ts(best_text.decode()) if best_text is not None else None
    candidates = [t for t in (fast, best_other) if t is not None]
    return max(candidates) if candidates else None


def read_truth(path: Path) -> list[dict[str, Any]]:
    """The truth rows (only the fields the evaluation uses)."""
    rows: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
                rows.append(
                    {
                        "customer_id": str(d["customer_id"]),
                        "purchases_in_holdout": int(d["purchases_in_holdout"]),
                        "churn_probability": float(d["churn_probability"]),
                        "purchase_propensity": float(d["purchase_propensity"]),
                    }
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise TruthError(f"{path}:{lineno}: not a truth row ({exc})") from None
    if not rows:
        raise TruthError(f"{path}: no truth rows")
    return rows


def _views(client: redis.Redis, ids: list[str]) -> Iterator[ProfileView]:
    """Stored views of customer ids (an empty profile for a customer that has none), in order."""
    for i in range(0, len(ids), PAGE):
        page = ids[i : i + PAGE]
        pipe = client.pipeline(transaction=False)
        for cid in page:
            pipe.hgetall(profile_key(customer_key(cid)))
        for cid, raw in zip(page, pipe.execute(), strict=True):
            v: ProfileView | None = None
            if raw:
                try:
                    v = from_fields(raw)
                except LayoutError:
                    v = None
            yield v if v is not None else view(new_state(customer_key(cid)))


def _auc(labels: list[int], scores: Iterable[float]) -> float | None:
    try:
        return round(roc_auc(labels, list(scores)), 4)
    except ValueError:  # one class only
        return None


def calibration(labels: list[int], probs: list[float], min_n: int = 200) -> dict[str, Any]:
    """Observed rate against mean score in each score decile (by rank, ties kept together as
    sorted): a decile of at least ``min_n`` customers is ``ok`` when the observed rate is within
    10 % of its mean score (relative).

    >>> c = calibration([0, 1] * 1000, [0.5] * 2000)
    >>> c["deciles"][0]["mean_score"], c["deciles"][0]["observed"], c["all_ok"]
    (0.5, 0.5, True)
    """
    n = len(labels)
    order = sorted(range(n), key=lambda i: probs[i])
    deciles = []
    for k in range(10):
        idx = order[k * n // 10 : (k + 1) * n // 10]
        if not idx:
            continue
        mean = sum(probs[i] for i in idx) / len(idx)
        obs = sum(labels[i] for i in idx) / len(idx)
        ok = None if len(idx) < min_n else abs(obs - mean) <= 0.1 * mean
        deciles.append({"n": len(idx), "mean_score": round(mean, 4), "observed": round(obs, 4),
                        "ok": ok})  # fmt: skip
    judged = [d["ok"] for d in deciles if d["ok"] is not None]
    return {"deciles": deciles, "judged": len(judged), "ok": sum(judged),
            "all_ok": bool(judged) and all(judged)}  # fmt: skip


def btyd_scores(
    views: list[ProfileView], as_of_ms: int, days: int, bounds: RfmBoundaries | None = None
) -> list[float] | None:
    """The BG/NBD baseline (:mod:`models.btyd`): each customer's expected purchases in the next
    ``days`` (0 for a customer who never bought) as of ``as_of_ms``, with the population
    parameters the dataflow published with ``bounds`` or, without them, fitted here by maximum
    likelihood on these customers' histories (:func:`models.btyd_histories.history_of`).
    ``None`` when neither is possible (fewer than 20 customers bought)."""
    from models import btyd
    from models.btyd_histories import MIN_CUSTOMERS, history_of

    hist = [
        history_of(v.purchases_total, v.first_seen_ts, v.last_purchase_ts, as_of_ms) for v in views
    ]
    if bounds is not None and bounds.btyd is not None:
        params = btyd.BgNbdParams(*bounds.btyd)
    else:
        known = [h for h in hist if h is not None]
        if len(known) < MIN_CUSTOMERS:
            return None
        params = btyd.fit([h[0] for h in known], [h[1] for h in known], [h[2] for h in known])
    return [
        0.0 if h is None else btyd.expected_purchases(params, float(days), h[0], h[1], h[2])
        for h in hist
    ]


def target_report(
    labels: list[int],
    probs: list[float],
    oracle: list[float],
    recency: list[float],
    sources: Iterable[str],
    btyd: list[float] | None = None,
) -> dict[str, Any]:
    """The metrics of one target (``recency`` and ``btyd`` already oriented: higher = more likely
    positive)."""
    auc = _auc(labels, probs)
    oracle_auc = _auc(labels, oracle)
    ratio = (
        round((auc - 0.5) / (oracle_auc - 0.5), 4)
        if auc is not None and oracle_auc is not None and oracle_auc > 0.5
        else None
    )
    return {
        "n": len(labels),
        "positives": sum(labels),
        "roc_auc": auc,
        "log_loss": round(log_loss(labels, probs), 4) if labels else None,
        "oracle_auc": oracle_auc,
        "recency_auc": _auc(labels, recency),
        "btyd_auc": _auc(labels, btyd) if btyd is not None else None,
        "ratio": ratio,
        "sources": dict(sorted(Counter(sources).items())),
        "calibration": calibration(labels, probs),
    }


def score_truth(
    client: redis.Redis, truth: list[dict[str, Any]], as_of_ms: int, horizons: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Score every truth customer as of ``as_of_ms`` and compare with the outcomes."""
    models = ModelSet()
    models.refresh(client)
    raw_bounds = client.get(BOUNDARIES_KEY)
    bounds = RfmBoundaries.decode(raw_bounds) if raw_bounds else None
    probs: dict[str, list[float]] = {t: [] for t in _ORACLE}
    sources: dict[str, list[str]] = {t: [] for t in _ORACLE}
    recency: list[float | None] = []
    ids = [r["customer_id"] for r in truth]
    views = list(_views(client, ids))
    for v in views:
        doc = profile_document(v, as_of_ms, bounds)
        scores = models.scores(doc)
        for t in _ORACLE:
            probs[t].append(float(scores[t]["probability"]))
            sources[t].append(str(scores[t]["source"]))
        d = doc.get("days_since_last_purchase")
        recency.append(float(d) if d is not None else None)
    known = [r for r in recency if r is not None]
    never = max(known) if known else 0.0
    rec = [r if r is not None else never for r in recency]
    bought = [int(r["purchases_in_holdout"] >= 1) for r in truth]
    churned = [1 - b for b in bought]
    btyd_churn = btyd_scores(views, as_of_ms, horizons["churn"], bounds)
    btyd_prop = btyd_scores(views, as_of_ms, horizons["propensity"], bounds)
    out = {
        "churn": target_report(
            churned,
            probs["churn"],
            [r["churn_probability"] for r in truth],
            rec,
            sources["churn"],
            None if btyd_churn is None else [-e for e in btyd_churn],
        ),
        "propensity": target_report(
            bought,
            probs["propensity"],
            [r["purchase_propensity"] for r in truth],
            [-r for r in rec],
            sources["propensity"],
            btyd_prop,
        ),
    }
    for t, rep in out.items():
        rep["horizon_days"] = horizons[t]
        rep["btyd_source"] = "dataflow" if bounds is not None and bounds.btyd else "fitted here"
    return out


def evaluate(
    events: Path,
    truth_path: Path,
    settings: Settings,
    flow_config: Any,
    run_flow: Any,
    holdout_days: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Replay ``events`` into a fresh temporary Redis, score the truth customers, report.

    ``flow_config`` is the :class:`~dataflows.flow.FlowConfig` to run (recovery is turned
    off), ``run_flow`` the function that runs a flow in this process.
    """
    from dataflows.deadletters import DeadLetterFileSink
    from dataflows.flow import FlowStats, build_flow
    from dataflows.sinks import RedisSink
    from dataflows.sources import JsonlFilesSource
    from nextbest.runtime import start_redis, stop_process

    truth = read_truth(truth_path)
    t0 = time.perf_counter()
    as_of = newest_ts(events)
    if as_of is None:
        raise TruthError(f"{events}: no event with a valid ts")
    cfg = dataclasses.replace(flow_config, recovery=False)
    with tempfile.TemporaryDirectory(prefix="nextbest-evaluate-") as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            stats = FlowStats()
            flow = build_flow(
                JsonlFilesSource([events], batch_size or settings.batch_size),
                RedisSink(url),
                DeadLetterFileSink(Path(tmp) / "dead-letter.jsonl"),
                config=cfg,
            )
            run_flow(flow)
            client: redis.Redis = redis.Redis.from_url(url)
            try:
                horizons = {t.name: getattr(settings, t.horizon_setting) for t in REGISTRY}
                report: dict[str, Any] = score_truth(client, truth, as_of, horizons)
            finally:
                client.close()
        finally:
            stop_process(proc.pid)  # nothing to keep: no save on the way out
            proc.wait(15)
    for rep in report.values():
        if holdout_days is not None:
            rep["holdout_days"] = holdout_days
            rep["horizon_matches"] = rep["horizon_days"] == holdout_days
    report["events"] = stats.read
    report["dead_lettered"] = sum(stats.dead_lettered.values())
    report["customers"] = len(truth)
    report["as_of_ms"] = as_of
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def report_lines(report: dict[str, Any]) -> list[str]:
    """The human table of a report."""
    head = (
        f"{'target':<11} {'n':>8} {'pos':>8} {'AUC':>7} {'logloss':>8} {'oracle':>7} "
        f"{'recency':>8} {'BG/NBD':>7} {'ratio':>7}  calibrated  sources"
    )
    lines = [head]
    for t in ("churn", "propensity"):
        r = report[t]
        src = ", ".join(f"{k} {v:,}" for k, v in r["sources"].items())
        cal = r["calibration"]
        lines.append(
            f"{t:<11} {r['n']:>8,} {r['positives']:>8,} {_fmt(r['roc_auc']):>7} "
            f"{_fmt(r['log_loss']):>8} {_fmt(r['oracle_auc']):>7} {_fmt(r['recency_auc']):>8} "
            f"{_fmt(r['btyd_auc']):>7} {_fmt(r['ratio'], '.3f'):>7}  "
            f"{cal['ok']:>2}/{cal['judged']:<2} dec.  {src}"
        )
    lines.append(
        f"{report['events']:,} events, {report['customers']:,} customers, "
        f"{report['seconds']:.1f} s; ratio = (AUC - 0.5) / (oracle - 0.5); calibrated: score "
        f"deciles of >= 200 customers whose observed rate is within 10 % of their mean score"
    )
    return lines
